//! Crash-consistency campaign (issue 10): random writes, FUA writes and
//! flushes through RAID1 over two members with a volatile write cache
//! (`bdev::cache`), then a crash (the array is abandoned without a clean
//! shutdown) with a power cut of both members' caches (a random subset
//! written back in random order, as a drive may), reassembly, resync, and
//! the checks:
//! - every write acknowledged before the last completed flush (and every
//!   acknowledged FUA write) is present: each chunk holds its last durable
//!   version or one written after it, never an older one or garbage;
//! - after the resync the mirrors agree everywhere.
//!
//! Seeded; a failure names the seed (`CAMPAIGN_SEED=<n>` replays it,
//! `CAMPAIGN_CUTS=<n>` runs longer).

mod raid1_common;

use std::sync::Arc;

use bdev::cache::{self, CutMode};
use bdev::raid1;
use bdev::testing::check_pattern;
use bdev::{open_channel, Bdev, IoRequest, IoStatus, IoType};
use raid1_common::*;

const BS: u32 = 4096;
const CHUNK: u64 = 4;
const CHUNKS: u64 = 48;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a block may hold after a crash.
#[derive(Clone, Default)]
struct BlockModel {
    /// Version made durable by a completed FLUSH or a FUA write (0: the
    /// initial zeroes).
    durable: u64,
    /// Versions acknowledged since, any of which may have survived.
    later: Vec<u64>,
}

fn run_one(seed: u64, cuts: u64) {
    let mut rng = Rng(seed | 1);
    let blocks = CHUNKS * CHUNK + 4096;
    let m0 = mem("m0", blocks, BS);
    let m1 = mem("m1", blocks, BS);
    let c0 = Arc::new(cache::create("c0", Arc::clone(&m0), 16).unwrap());
    let c1 = Arc::new(cache::create("c1", Arc::clone(&m1), 16).unwrap());
    let d0: Arc<dyn Bdev> = Arc::clone(&c0) as Arc<dyn Bdev>;
    let d1: Arc<dyn Bdev> = Arc::clone(&c1) as Arc<dyn Bdev>;
    let mut model = vec![BlockModel::default(); (CHUNKS * CHUNK) as usize];
    let mut version = 0u64;
    let mut p = params("r0", 64);
    p.members = vec!["c0".into(), "c1".into()];
    for cut in 0..cuts {
        let r = raid1::create(&p, vec![Arc::clone(&d0), Arc::clone(&d1)])
            .unwrap_or_else(|e| panic!("seed {seed} cut {cut}: assembly failed: {e}"));
        let rd: Arc<dyn Bdev> = as_dyn(&r);
        let mut task = r.rebuild_task();
        // Bits are cleared as soon as their writes are done (md's bitmap
        // daemon, without its delay), so the campaign crosses clearing.
        task.set_clear_interval(std::time::Duration::ZERO);
        settle(&mut task);
        let off = data_offset(&r);
        // After the resync the mirrors agree, and every chunk is allowed.
        let n = CHUNKS * CHUNK;
        assert!(
            members_equal(&d0, &d1, off, n),
            "seed {seed} cut {cut}: mirrors differ after resync"
        );
        check_model(&rd, &mut model, seed, cut);
        // A burst of I/O, then the crash somewhere in it.
        let mut ch = open_channel(&rd).unwrap();
        let ops = 8 + rng.below(24);
        for _ in 0..ops {
            match rng.below(10) {
                0 => {
                    let st = submit_wait(&mut ch, &IoRequest::flush(), &mut task);
                    assert_eq!(st, IoStatus::Success, "seed {seed}: flush");
                    for m in model.iter_mut() {
                        if let Some(&v) = m.later.last() {
                            m.durable = v;
                            m.later.clear();
                        }
                    }
                }
                k => {
                    version += 1;
                    let c = rng.below(CHUNKS);
                    let fua = k == 1;
                    let ios = [Io {
                        io_type: IoType::Write,
                        lba: c * CHUNK,
                        blocks: CHUNK,
                        seed: version,
                    }];
                    let st = if fua {
                        write_fua(&mut ch, c * CHUNK, version, &mut task)
                    } else {
                        run_ios(&mut ch, &ios, 1, &mut |_| {
                            task.poll();
                        })[0]
                    };
                    assert_eq!(st, IoStatus::Success, "seed {seed}: write");
                    for m in &mut model[(c * CHUNK) as usize..((c + 1) * CHUNK) as usize] {
                        if fua {
                            m.durable = version;
                            m.later.clear();
                        } else {
                            m.later.push(version);
                        }
                    }
                }
            }
            for _ in 0..rng.below(4) {
                task.poll();
            }
        }
        drop(ch);
        // Crash: the array is dropped without its clean shutdown (its state
        // in memory and whatever it had not written are gone; the members'
        // caches finish the write-backs they had started, as a drive does
        // when its host dies), then the members lose power.
        drop(task);
        drop(rd);
        drop(r);
        c0.power_cut(CutMode::Random, rng.next()).unwrap();
        c1.power_cut(CutMode::Random, rng.next()).unwrap();
    }
}

fn write_fua(
    ch: &mut bdev::Channel,
    lba: u64,
    version: u64,
    task: &mut raid1::RebuildTask,
) -> IoStatus {
    let len = (CHUNK * BS as u64) as usize;
    let mut buf = bdev::AlignedBuf::new(len);
    bdev::testing::fill_pattern(buf.as_mut_slice(), lba, BS as usize, version);
    let v = [buf.iovec(0, len)];
    // `buf` outlives the call, which waits for the completion.
    submit_wait(ch, &IoRequest::write(lba, CHUNK, &v).with_fua(true), task)
}

/// Submits `req` and polls the channel (and the array's background task,
/// which writes the bitmap) until it completes.
fn submit_wait(
    ch: &mut bdev::Channel,
    req: &IoRequest<'_>,
    task: &mut raid1::RebuildTask,
) -> IoStatus {
    let mut st = None;
    // SAFETY: the callers keep the buffers alive until this returns, and
    // it returns only after the completion.
    unsafe { ch.submit(req, 1) }.unwrap();
    let t0 = std::time::Instant::now();
    while st.is_none() {
        ch.poll(&mut |_, s| st = Some(s));
        task.poll();
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(30),
            "request hung"
        );
    }
    st.unwrap()
}

/// Reads every block and checks it against the model (a write that was
/// not durable may be torn: a drive keeps whole blocks, not whole
/// requests). Afterwards what the mirrors hold is durable.
fn check_model(rd: &Arc<dyn Bdev>, model: &mut [BlockModel], seed: u64, cut: u64) {
    let buf = read_direct(rd, 0, CHUNKS * CHUNK);
    let bs = BS as usize;
    for (b, m) in model.iter_mut().enumerate() {
        let lba = b as u64;
        let data = &buf.as_slice()[b * bs..(b + 1) * bs];
        let holds = |v: u64| {
            if v == 0 {
                data.iter().all(|&x| x == 0)
            } else {
                check_pattern(data, lba, bs, v)
            }
        };
        match std::iter::once(m.durable)
            .chain(m.later.iter().copied())
            .find(|&v| holds(v))
        {
            Some(v) => {
                m.durable = v;
                m.later.clear();
            }
            None => panic!(
                "seed {seed} cut {cut}: block {lba} lost acknowledged data: want version {} (durable) or one of {:?}",
                m.durable, m.later
            ),
        }
    }
}

#[test]
fn power_cuts_lose_no_durable_write_and_mirrors_agree() {
    let cuts: u64 = std::env::var("CAMPAIGN_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let seeds: Vec<u64> = match std::env::var("CAMPAIGN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        Some(s) => vec![s],
        None => vec![
            0x5eed_0001,
            0x5eed_0002,
            0x5eed_0003,
            0x5eed_0004,
            0x5eed_0005,
        ],
    };
    for s in seeds {
        run_one(s, cuts);
    }
}
