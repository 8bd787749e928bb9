//! The conformance suite on the loopback provider (the verbs run is the
//! `rdma-conformance` binary inside the rxe VM).

use rdma::conformance::{self, Env, CASES};

fn run(name: &str) {
    let idx = CASES.iter().position(|c| c.0 == name).expect("case exists");
    // Distinct ports per case: the loopback fabric is process-wide and the
    // tests run in parallel.
    let env = Env::loopback(40000 + 2 * idx as u16);
    let started = std::time::Instant::now();
    let r = conformance::run(&CASES[idx], &env);
    assert!(r.is_ok(), "{name}: {}", r.unwrap_err());
    assert!(
        started.elapsed() < env.timeout * 4,
        "{name} took {:?}",
        started.elapsed()
    );
}

macro_rules! cases {
    ($($name:ident),* $(,)?) => {
        $( #[test] fn $name() { run(stringify!($name)); } )*
        #[test]
        fn every_case_has_a_test() {
            let mine = [$(stringify!($name)),*];
            for c in CASES {
                assert!(mine.contains(&c.0), "no #[test] for case {}", c.0);
            }
        }
    };
}

cases!(
    device_query,
    connect_accept_private_data,
    reject_private_data,
    connect_no_listener,
    local_misuse,
    send_recv_ordering,
    acceptor_reads_with_asymmetric_depths,
    send_with_imm,
    send_waits_for_recv,
    rdma_write_read_3sge,
    write_beyond_region,
    wrong_rkey,
    after_dereg,
    access_flags,
    disconnect_flushes_recvs,
    peer_vanishes,
);
