//! Loopback-only behaviour: fault injection, local errors, threading, and
//! that handles can be dropped in any order.

use std::time::{Duration, Instant};

use rdma::conformance::{connect_pair, Env, Pair};
use rdma::{
    AccessFlags, CmChannel, CmEventKind, CmId, Completion, Context, Cq, MrBuf, Pd, Provider,
    QpCaps, SendWr, Sge, WcStatus,
};

fn pair(port: u16) -> Pair {
    connect_pair(&Env::loopback(port), 0).expect("connect")
}

fn poll_n(cq: &mut Cq, n: usize) -> Vec<Completion> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut out = Vec::new();
    let mut buf = [Completion::EMPTY; 16];
    while out.len() < n {
        let k = cq.poll(&mut buf[..(n - out.len()).min(16)]);
        out.extend_from_slice(&buf[..k]);
        assert!(Instant::now() < deadline, "timed out with {out:?}");
        if k == 0 {
            std::thread::yield_now();
        }
    }
    out
}

fn events(chan: &mut CmChannel) -> Vec<CmEventKind> {
    let mut v = Vec::new();
    while let Some(e) = chan.poll_event().expect("poll") {
        v.push(e.kind);
    }
    v
}

#[test]
fn break_connection_errors_both_sides_then_disconnected() {
    let mut p = pair(41000);
    let sbuf = MrBuf::new(&p.client.pd, 4096).unwrap();
    let rbuf = MrBuf::new(&p.server.pd, 4096).unwrap();
    let s = sbuf.sge(0, 64).unwrap();
    let r = rbuf.sge(0, 64).unwrap();
    // SAFETY: buffers outlive the completions polled below.
    unsafe {
        // Two SENDs held (no RECV at the server yet), then a break.
        p.client.id().post_send(&SendWr::send(1, &[s])).unwrap();
        p.client.id().post_send(&SendWr::send(2, &[s])).unwrap();
    }
    let faults = p.client.id().faults().expect("loopback QP");
    // The server posts a RECV on the other end of a now broken link.
    faults.break_connection();
    // SAFETY: as above.
    unsafe { p.server.id().post_recv(9, &[r]).unwrap() };
    let c = poll_n(&mut p.client.cq, 2);
    assert_eq!((c[0].wr_id, c[0].status), (1, WcStatus::RetryExceeded));
    assert_eq!((c[1].wr_id, c[1].status), (2, WcStatus::WrFlush));
    let sc = poll_n(&mut p.server.cq, 1);
    assert_eq!((sc[0].wr_id, sc[0].status), (9, WcStatus::WrFlush));
    assert!(matches!(
        events(&mut p.client.chan)[0],
        CmEventKind::Disconnected
    ));
    assert!(matches!(
        events(&mut p.server.chan)[0],
        CmEventKind::Disconnected
    ));
    // Later posts flush.
    // SAFETY: as above.
    unsafe { p.client.id().post_send(&SendWr::send(3, &[s])).unwrap() };
    assert_eq!(poll_n(&mut p.client.cq, 1)[0].status, WcStatus::WrFlush);
}

#[test]
fn delayed_completions_keep_order() {
    let mut p = pair(41002);
    let remote = unsafe {
        // SAFETY: read only after the writes completed.
        MrBuf::with_access(
            &p.server.pd,
            4096,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
        )
        .unwrap()
    };
    let src = MrBuf::new(&p.client.pd, 4096).unwrap();
    let f = p.client.id().faults().unwrap();
    f.delay_completions(Duration::from_millis(30));
    let t = Instant::now();
    for i in 0..4 {
        let s = src.sge(0, 100).unwrap();
        // SAFETY: buffers outlive the completions polled below.
        unsafe {
            p.client
                .id()
                .post_send(&SendWr::write(i, &[s], remote.addr(), remote.rkey()))
                .unwrap()
        };
    }
    let mut buf = [Completion::EMPTY; 4];
    assert_eq!(p.client.cq.poll(&mut buf), 0, "completion before the delay");
    let c = poll_n(&mut p.client.cq, 4);
    assert!(t.elapsed() >= Duration::from_millis(30));
    assert_eq!(
        c.iter().map(|c| c.wr_id).collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    f.delay_completions(Duration::ZERO);
}

#[test]
fn fail_next_n_then_recover() {
    let mut p = pair(41004);
    // SAFETY: read only after the writes completed.
    let remote = unsafe {
        MrBuf::with_access(
            &p.server.pd,
            4096,
            AccessFlags::LOCAL_WRITE | AccessFlags::REMOTE_WRITE,
        )
    }
    .unwrap();
    let mut src = MrBuf::new(&p.client.pd, 4096).unwrap();
    src.as_mut_slice().fill(7);
    p.client
        .id()
        .faults()
        .unwrap()
        .fail_next(2, WcStatus::RemoteAccess);
    for i in 0..3 {
        let s = src.sge(0, 100).unwrap();
        // SAFETY: buffers outlive the completions polled below.
        unsafe {
            p.client
                .id()
                .post_send(&SendWr::write(i, &[s], remote.addr(), remote.rkey()))
                .unwrap()
        };
        let c = poll_n(&mut p.client.cq, 1)[0];
        if i < 2 {
            assert_eq!(c.status, WcStatus::RemoteAccess);
            assert!(
                remote.as_slice().iter().all(|&b| b == 0),
                "failed WR touched memory"
            );
        } else {
            assert_eq!(c.status, WcStatus::Success);
            assert!(remote.as_slice()[..100].iter().all(|&b| b == 7));
        }
    }
}

#[test]
fn rnr_fault_fails_send_without_recv() {
    let mut p = pair(41006);
    let src = MrBuf::new(&p.client.pd, 64).unwrap();
    p.client.id().faults().unwrap().set_rnr_fail(true);
    let s = src.sge(0, 8).unwrap();
    // SAFETY: buffers outlive the completions polled below.
    unsafe {
        p.client
            .id()
            .post_send(&SendWr::send(5, &[s]).unsignaled())
            .unwrap()
    };
    let c = poll_n(&mut p.client.cq, 1)[0];
    assert_eq!((c.wr_id, c.status), (5, WcStatus::RnrRetryExceeded));
}

#[test]
fn message_longer_than_recv_and_bad_lkey() {
    let mut p = pair(41008);
    let src = MrBuf::new(&p.client.pd, 4096).unwrap();
    let dst = MrBuf::new(&p.server.pd, 4096).unwrap();
    // SAFETY: buffers outlive the completions polled below.
    unsafe {
        p.server
            .id()
            .post_recv(1, &[dst.sge(0, 16).unwrap()])
            .unwrap();
        p.client
            .id()
            .post_send(&SendWr::send(2, &[src.sge(0, 17).unwrap()]))
            .unwrap();
    }
    assert_eq!(poll_n(&mut p.server.cq, 1)[0].status, WcStatus::LocalLength);
    assert_eq!(
        poll_n(&mut p.client.cq, 1)[0].status,
        WcStatus::RemoteInvalidRequest
    );

    let mut p = pair(41010);
    let src = MrBuf::new(&p.client.pd, 4096).unwrap();
    let bad = Sge {
        lkey: src.lkey() ^ 0x80,
        ..src.sge(0, 16).unwrap()
    };
    // SAFETY: refused by the key check; `src` outlives the completion anyway.
    unsafe {
        p.client
            .id()
            .post_send(&SendWr::write(3, &[bad], src.addr(), src.rkey()))
            .unwrap()
    };
    assert_eq!(
        poll_n(&mut p.client.cq, 1)[0].status,
        WcStatus::LocalProtection
    );
}

#[test]
fn drop_in_any_order() {
    let mut p = pair(41012);
    let buf = MrBuf::new(&p.server.pd, 4096).unwrap();
    // SAFETY: the QP is destroyed before `buf` (dropped last below).
    unsafe {
        p.server
            .id()
            .post_recv(1, &[buf.sge(0, 64).unwrap()])
            .unwrap()
    };
    let Pair { server, client, .. } = p;
    let rdma::conformance::Side {
        chan,
        ctx,
        pd,
        cq,
        id,
    } = server;
    drop(ctx);
    drop(pd);
    drop(chan);
    drop(cq);
    drop(client);
    drop(id);
    drop(buf);
}

#[test]
fn provider_objects_are_send() {
    fn send<T: Send>() {}
    fn sync<T: Sync>() {}
    send::<Context>();
    sync::<Context>();
    send::<Pd>();
    sync::<Pd>();
    send::<MrBuf>();
    send::<Cq>();
    send::<CmChannel>();
    send::<CmId>();
    send::<rdma::CmEvent>();
    sync::<rdma::Faults>();
}

#[test]
fn two_threads_stream() {
    const N: u64 = 20_000;
    let Pair {
        mut server,
        mut client,
        ..
    } = pair(41014);
    let rbuf = MrBuf::new(&server.pd, 64 * 64).unwrap();
    for i in 0..64u64 {
        // SAFETY: `rbuf` lives in this scope, which outlives both threads' QP use.
        unsafe {
            server
                .id()
                .post_recv(i, &[rbuf.sge(i as usize * 64, 64).unwrap()])
                .unwrap()
        };
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut got = 0;
            let mut wc = [Completion::EMPTY; 16];
            while got < N {
                assert!(Instant::now() < deadline, "receiver timed out at {got}");
                let n = server.cq.poll(&mut wc);
                for c in &wc[..n] {
                    assert_eq!(c.status, WcStatus::Success);
                    let sge = rbuf.sge(c.wr_id as usize * 64, 64).unwrap();
                    // SAFETY: as above.
                    unsafe { server.id().post_recv(c.wr_id, &[sge]).unwrap() };
                    got += 1;
                }
            }
        });
        s.spawn(|| {
            let sbuf = MrBuf::new(&client.pd, 64).unwrap();
            let sge = [sbuf.sge(0, 64).unwrap()];
            let mut wc = [Completion::EMPTY; 16];
            let (mut posted, mut done) = (0, 0);
            while done < N {
                assert!(Instant::now() < deadline, "sender timed out at {done}");
                if posted < N && posted - done < 128 {
                    let wr = SendWr {
                        signaled: posted % 32 == 31 || posted == N - 1,
                        ..SendWr::send(posted, &sge)
                    };
                    // SAFETY: `sbuf` is never written and outlives the QP use (awaited).
                    unsafe { client.id().post_send(&wr).unwrap() };
                    posted += 1;
                }
                let n = client.cq.poll(&mut wc);
                for c in &wc[..n] {
                    assert_eq!(c.status, WcStatus::Success);
                    done = c.wr_id + 1;
                }
            }
        });
    });
}

#[test]
fn listen_twice_is_addr_in_use_and_wrong_provider_objects() {
    let chan = CmChannel::new(Provider::Loopback).unwrap();
    let _l = chan.listen("127.0.0.1:41016".parse().unwrap(), 4).unwrap();
    let e = chan
        .listen("0.0.0.0:41016".parse().unwrap(), 4)
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc::EADDRINUSE));
    assert_eq!(
        e.to_string(),
        "rdma_bind_addr failed: Address already in use (errno 98)"
    );
    let mut id: CmId = chan.create_id().unwrap();
    let ctx = Context::open(Provider::Loopback, "lo").unwrap();
    let (pd, cq) = (Pd::new(&ctx).unwrap(), Cq::new(&ctx, 16).unwrap());
    // Not bound to a device yet.
    assert!(id.create_qp(&pd, &cq, &cq, QpCaps::default()).is_err());
}
