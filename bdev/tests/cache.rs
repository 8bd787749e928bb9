//! The volatile write-cache fault model (`bdev::cache`): conformance while
//! no power cut happens, what a cut loses and what it must keep.

use std::sync::Arc;

use bdev::cache::{self, CacheBdev, CutMode};
use bdev::testing::{self, check_pattern, fill_pattern, AlignedBuf, Persistence};
use bdev::{error, malloc, open_channel, Bdev, Channel, IoRequest, IoStatus};

const BS: usize = 512;

fn stack(num_blocks: u64, cache_blocks: u64) -> (Arc<dyn Bdev>, Arc<CacheBdev>, Arc<dyn Bdev>) {
    let base: Arc<dyn Bdev> = Arc::new(malloc::create("m", num_blocks, BS as u32).unwrap());
    let c = Arc::new(cache::create("c", Arc::clone(&base), cache_blocks).unwrap());
    let cd: Arc<dyn Bdev> = c.clone();
    (base, c, cd)
}

fn write_seed(ch: &mut Channel, lba: u64, n: u64, seed: u64, fua: bool) -> IoStatus {
    let mut b = AlignedBuf::new(n as usize * BS);
    fill_pattern(b.as_mut_slice(), lba, BS, seed);
    let v = [b.iovec(0, b.len())];
    // SAFETY: `b` outlives the synchronous call.
    unsafe { testing::run(ch, &IoRequest::write(lba, n, &v).with_fua(fua)) }
}

fn holds(ch: &mut Channel, lba: u64, seed: u64) -> bool {
    let mut b = AlignedBuf::new(BS);
    assert_eq!(testing::read(ch, lba, &mut b), IoStatus::Success);
    check_pattern(b.as_slice(), lba, BS, seed)
}

fn zeroed(ch: &mut Channel, lba: u64) -> bool {
    let mut b = AlignedBuf::new(BS);
    assert_eq!(testing::read(ch, lba, &mut b), IoStatus::Success);
    b.as_slice().iter().all(|&x| x == 0)
}

fn flush(ch: &mut Channel) -> IoStatus {
    testing::run_nodata(ch, &IoRequest::flush())
}

#[test]
fn conformance_while_no_cut_happens() {
    // A cache larger than everything the suite writes, and one so small
    // that every write evicts.
    for cache_blocks in [4096, 4, 1] {
        let (_, _, c) = stack(256, cache_blocks);
        testing::conformance(&c, Persistence::Zeroing);
    }
    let base: Arc<dyn Bdev> = Arc::new(malloc::create("m4k", 128, 4096).unwrap());
    let c: Arc<dyn Bdev> = Arc::new(cache::create("c4k", base, 8).unwrap());
    testing::conformance(&c, Persistence::Zeroing);
}

#[test]
fn bad_parameters() {
    let base: Arc<dyn Bdev> = Arc::new(malloc::create("m", 64, 512).unwrap());
    let e = cache::create("c", Arc::clone(&base), 0)
        .err()
        .unwrap()
        .to_string();
    assert_eq!(e, "invalid parameter `cache_blocks`: must be at least 1");
    let e = cache::create("a/b", base, 8).err().unwrap().to_string();
    assert!(e.starts_with("invalid parameter `name`"), "{e}");
}

#[test]
fn an_acknowledged_write_without_flush_is_lost_by_a_cut() {
    let (base, c, cd) = stack(64, 16);
    let mut ch = open_channel(&cd).unwrap();
    let mut bch = open_channel(&base).unwrap();
    assert_eq!(write_seed(&mut ch, 5, 1, 1, false), IoStatus::Success);
    assert_eq!(flush(&mut ch), IoStatus::Success);
    assert_eq!(write_seed(&mut ch, 5, 4, 2, false), IoStatus::Success);
    assert!(holds(&mut ch, 5, 2), "reads see the cache");
    assert!(holds(&mut bch, 5, 1), "the base only has the flushed value");
    assert!(
        zeroed(&mut bch, 6),
        "the base never saw the unflushed write"
    );
    assert_eq!(c.occupancy(), (4, 4));
    let r = c.power_cut(CutMode::All, 0).unwrap();
    assert_eq!((r.lost_blocks, r.written_back_blocks), (4, 0));
    assert!(holds(&mut ch, 5, 1), "block 5 is back to its durable value");
    for lba in 6..9 {
        assert!(
            zeroed(&mut ch, lba),
            "block {lba}: the acknowledged write is lost"
        );
    }
    assert_eq!(c.occupancy(), (0, 0));
    // The bdev keeps working after the cut.
    assert_eq!(write_seed(&mut ch, 6, 1, 3, false), IoStatus::Success);
    assert!(holds(&mut ch, 6, 3));
    let ds = cd.driver_specific().unwrap();
    assert_eq!(ds["cache"]["power_cuts"], 1);
    assert_eq!(ds["cache"]["lost_blocks"], 4);
    assert_eq!(ds["cache"]["flushes"], 1);
    assert_eq!(ds["cache"]["dirty_blocks"], 1);
}

#[test]
fn a_write_followed_by_a_completed_flush_survives_a_cut() {
    let (base, c, cd) = stack(64, 16);
    let mut ch = open_channel(&cd).unwrap();
    assert_eq!(write_seed(&mut ch, 10, 8, 7, false), IoStatus::Success);
    assert_eq!(flush(&mut ch), IoStatus::Success);
    assert_eq!(c.occupancy(), (8, 0), "flushed blocks stay cached, clean");
    c.power_cut(CutMode::All, 0).unwrap();
    for lba in 10..18 {
        assert!(holds(&mut ch, lba, 7), "block {lba} survived");
    }
    let mut bch = open_channel(&base).unwrap();
    assert!(holds(&mut bch, 17, 7), "and is on the base");
}

#[test]
fn a_fua_write_survives_a_cut() {
    let (base, c, cd) = stack(64, 16);
    let mut ch = open_channel(&cd).unwrap();
    assert_eq!(write_seed(&mut ch, 3, 1, 1, false), IoStatus::Success);
    assert_eq!(write_seed(&mut ch, 20, 3, 9, true), IoStatus::Success);
    let mut bch = open_channel(&base).unwrap();
    assert!(holds(&mut bch, 22, 9), "on the base when acknowledged");
    c.power_cut(CutMode::All, 0).unwrap();
    for lba in 20..23 {
        assert!(holds(&mut ch, lba, 9), "FUA block {lba} survived");
    }
    assert!(zeroed(&mut ch, 3), "the plain write did not");
    assert_eq!(cd.driver_specific().unwrap()["cache"]["fua_writes"], 1);
}

#[test]
fn a_full_cache_writes_back_the_oldest_first() {
    let (base, c, cd) = stack(64, 4);
    let mut ch = open_channel(&cd).unwrap();
    for lba in 0..6 {
        assert_eq!(write_seed(&mut ch, lba, 1, 5, false), IoStatus::Success);
        assert!(c.occupancy().0 <= 4, "never more than cache_blocks cached");
    }
    let mut bch = open_channel(&base).unwrap();
    assert!(
        holds(&mut bch, 0, 5) && holds(&mut bch, 1, 5),
        "oldest written back"
    );
    assert!(zeroed(&mut bch, 5), "newest still only cached");
    c.power_cut(CutMode::All, 0).unwrap();
    assert!(holds(&mut ch, 1, 5) && zeroed(&mut ch, 5));
}

#[test]
fn channels_share_one_coherent_cache() {
    let (_, c, cd) = stack(64, 8);
    let mut a = open_channel(&cd).unwrap();
    let mut b = open_channel(&cd).unwrap();
    for round in 0..20u64 {
        let lba = round % 12;
        let (w, r) = if round % 2 == 0 {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        assert_eq!(write_seed(w, lba, 1, 100 + round, false), IoStatus::Success);
        assert!(
            holds(r, lba, 100 + round),
            "round {round}: other channel sees it"
        );
    }
    assert_eq!(flush(&mut b), IoStatus::Success);
    c.power_cut(CutMode::All, 0).unwrap();
    for lba in 0..12u64 {
        let last = (0..20u64).rev().find(|r| r % 12 == lba).unwrap();
        assert!(holds(&mut a, lba, 100 + last), "block {lba} after the cut");
    }
}

#[test]
fn long_unmap_and_write_zeroes_go_through() {
    let (base, c, cd) = stack(64, 4);
    let mut ch = open_channel(&cd).unwrap();
    assert_eq!(write_seed(&mut ch, 0, 16, 3, false), IoStatus::Success);
    assert_eq!(
        testing::run_nodata(&mut ch, &IoRequest::write_zeroes(2, 10)),
        IoStatus::Success
    );
    let mut bch = open_channel(&base).unwrap();
    assert!(zeroed(&mut bch, 11), "went to the base");
    for lba in 2..12 {
        assert!(zeroed(&mut ch, lba), "no stale cached copy of {lba}");
    }
    c.power_cut(CutMode::All, 0).unwrap();
    assert!(zeroed(&mut ch, 5), "a pass-through is durable");
    assert_eq!(cd.driver_specific().unwrap()["cache"]["passthrough_ops"], 1);
}

#[test]
fn a_failed_write_back_fails_the_flush_and_a_retry_succeeds() {
    let m: Arc<dyn Bdev> = Arc::new(malloc::create("m", 64, 512).unwrap());
    let e = Arc::new(error::create("e", m).unwrap());
    let ed: Arc<dyn Bdev> = e.clone();
    let cd: Arc<dyn Bdev> = Arc::new(cache::create("c", ed, 8).unwrap());
    let mut ch = open_channel(&cd).unwrap();
    assert_eq!(write_seed(&mut ch, 1, 1, 4, false), IoStatus::Success);
    let arm: error::InjectParams =
        serde_json::from_value(serde_json::json!({"name": "e", "io_type": "write"})).unwrap();
    e.inject(&arm).unwrap();
    assert_eq!(flush(&mut ch), IoStatus::MediumError);
    assert_eq!(
        write_seed(&mut ch, 2, 1, 4, true),
        IoStatus::MediumError,
        "FUA too"
    );
    let clear: error::InjectParams =
        serde_json::from_value(serde_json::json!({"name": "e", "clear": true})).unwrap();
    e.inject(&clear).unwrap();
    assert_eq!(flush(&mut ch), IoStatus::Success);
    assert!(holds(&mut ch, 1, 4));
}

/// A tiny seeded generator for the campaign (no dependency).
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

/// Random writes (plain and FUA) and flushes from two channels, random
/// power cuts: afterwards every block holds its last durable value or a
/// later acknowledged one — never garbage, never older.
#[test]
fn random_cuts_keep_every_durable_value() {
    const NB: u64 = 48;
    let (mut kept, mut lost) = (0, 0);
    for seed in 1..=12u64 {
        let (_, c, cd) = stack(NB, 8);
        let mut chans = [open_channel(&cd).unwrap(), open_channel(&cd).unwrap()];
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        // Per block: acknowledged values (0 = zeroes), oldest first; index
        // 0 of each list is durable.
        let mut hist: Vec<Vec<u64>> = vec![vec![0]; NB as usize];
        let mut next_val = 1u64;
        for step in 0..400 {
            let ch = &mut chans[rng.below(2) as usize];
            match rng.below(20) {
                0..=13 => {
                    let lba = rng.below(NB - 3);
                    let n = 1 + rng.below(3);
                    let fua = rng.below(6) == 0;
                    let v = next_val;
                    next_val += 1;
                    assert_eq!(write_seed(ch, lba, n, v, fua), IoStatus::Success);
                    for b in lba..lba + n {
                        let h = &mut hist[b as usize];
                        if fua {
                            h.clear();
                        }
                        h.push(v);
                    }
                }
                14..=16 => {
                    assert_eq!(flush(ch), IoStatus::Success);
                    for h in hist.iter_mut() {
                        let last = *h.last().unwrap();
                        *h = vec![last];
                    }
                }
                _ => {
                    let mode = if rng.below(4) == 0 {
                        CutMode::All
                    } else {
                        CutMode::Random
                    };
                    let cut_seed = rng.next();
                    let r = c.power_cut(mode, cut_seed).unwrap();
                    kept += r.written_back_blocks;
                    lost += r.lost_blocks;
                    for lba in 0..NB {
                        let mut b = AlignedBuf::new(BS);
                        assert_eq!(testing::read(ch, lba, &mut b), IoStatus::Success);
                        let h = &hist[lba as usize];
                        let found = h.iter().copied().find(|&v| {
                            if v == 0 {
                                b.as_slice().iter().all(|&x| x == 0)
                            } else {
                                check_pattern(b.as_slice(), lba, BS, v)
                            }
                        });
                        let Some(v) = found else {
                            panic!(
                                "seed {seed} step {step} ({mode:?} cut, seed {cut_seed}): \
                                 block {lba} holds neither its durable value nor a later \
                                 acknowledged one (candidates {h:?})"
                            );
                        };
                        hist[lba as usize] = vec![v];
                    }
                }
            }
        }
    }
    assert!(
        kept > 0 && lost > 0,
        "random cuts both kept ({kept}) and lost ({lost}) blocks"
    );
}

/// Many writes in flight at once from two channels through a small cache
/// (write-backs from both race for the same blocks), then a flush on one
/// channel and a cut: the newest value of every block survives.
#[test]
fn concurrent_channels_with_writes_in_flight_stay_coherent() {
    const NB: u64 = 32;
    let (base, c, cd) = stack(NB, 6);
    let mut chans = [open_channel(&cd).unwrap(), open_channel(&cd).unwrap()];
    let mut latest = vec![0u64; NB as usize];
    for round in 0..30u64 {
        // Each round: every block written once, alternating channels, all
        // in flight together; rounds are ordered by waiting in between.
        let mut bufs: Vec<AlignedBuf> = Vec::new();
        let mut left = 0;
        for lba in 0..NB {
            let seed = 1 + round * NB + lba;
            let mut b = AlignedBuf::new(BS);
            fill_pattern(b.as_mut_slice(), lba, BS, seed);
            let v = [b.iovec(0, BS)];
            let ch = &mut chans[((lba + round) % 2) as usize];
            let fua = (lba + round) % 11 == 0;
            // SAFETY: `bufs` keeps every buffer until all completions.
            unsafe { ch.submit(&IoRequest::write(lba, 1, &v).with_fua(fua), lba) }.expect("room");
            bufs.push(b);
            latest[lba as usize] = seed;
            left += 1;
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while left > 0 {
            for ch in chans.iter_mut() {
                ch.poll(&mut |tag, st| {
                    assert_eq!(st, IoStatus::Success, "round {round} block {tag}");
                    left -= 1;
                });
            }
            assert!(std::time::Instant::now() < deadline, "writes hung");
        }
        assert!(c.occupancy().0 <= 6, "within capacity once acknowledged");
        for lba in 0..NB {
            let ch = &mut chans[(lba % 2) as usize];
            assert!(
                holds(ch, lba, latest[lba as usize]),
                "round {round} block {lba}"
            );
        }
    }
    assert_eq!(flush(&mut chans[1]), IoStatus::Success);
    c.power_cut(CutMode::All, 0).unwrap();
    let mut bch = open_channel(&base).unwrap();
    for lba in 0..NB {
        assert!(
            holds(&mut bch, lba, latest[lba as usize]),
            "block {lba} on the base"
        );
    }
}

/// Over a base with a cache of its own (a file: flush = fdatasync), a
/// FLUSH flushes the base after the write-backs, and so does a FUA write.
#[test]
fn flush_and_fua_flush_the_base() {
    use std::sync::atomic::Ordering::Relaxed;
    let base_dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/test-scratch");
    std::fs::create_dir_all(&base_dir).unwrap();
    let dir = tempfile::tempdir_in(base_dir).unwrap();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let f: Arc<dyn Bdev> =
        Arc::new(bdev::file::create("f", path.to_str().unwrap(), BS as u32).unwrap());
    assert!(f.info().caps.flush);
    let c = Arc::new(cache::create("c", Arc::clone(&f), 16).unwrap());
    let cd: Arc<dyn Bdev> = c.clone();
    let mut ch = open_channel(&cd).unwrap();
    assert_eq!(write_seed(&mut ch, 4, 2, 8, false), IoStatus::Success);
    assert_eq!(f.stats().flushes.load(Relaxed), 0);
    assert_eq!(flush(&mut ch), IoStatus::Success);
    assert_eq!(f.stats().flushes.load(Relaxed), 1, "FLUSH flushed the base");
    assert_eq!(write_seed(&mut ch, 9, 1, 8, true), IoStatus::Success);
    assert_eq!(f.stats().flushes.load(Relaxed), 2, "FUA flushed the base");
    assert_eq!(
        testing::run_nodata(&mut ch, &IoRequest::reset()),
        IoStatus::Success
    );
    c.power_cut(CutMode::All, 0).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        check_pattern(&bytes[4 * BS..6 * BS], 4, BS, 8),
        "flushed data in the file"
    );
    assert!(
        check_pattern(&bytes[9 * BS..10 * BS], 9, BS, 8),
        "FUA data in the file"
    );
}

/// A write waiting for room when the power fails completes `Aborted`; a
/// write-back already sent may still land, and a newer write of that block
/// made after the cut is written back after it (one base write per block
/// at a time, across cuts), so the newer value is what the base keeps.
#[test]
fn a_cut_aborts_waiting_io_and_a_late_write_back_never_wins() {
    let m: Arc<dyn Bdev> = Arc::new(malloc::create("m", 64, 512).unwrap());
    let d: Arc<dyn Bdev> = Arc::new(bdev::delay::create("d", Arc::clone(&m), 0, 30_000).unwrap());
    let c = Arc::new(cache::create("c", d, 1).unwrap());
    let cd: Arc<dyn Bdev> = c.clone();
    let mut ch = open_channel(&cd).unwrap();
    assert_eq!(write_seed(&mut ch, 0, 1, 1, false), IoStatus::Success);
    // Block 1 needs room: block 0's write-back goes out (30 ms).
    let mut b = AlignedBuf::new(BS);
    fill_pattern(b.as_mut_slice(), 1, BS, 2);
    let v = [b.iovec(0, BS)];
    // SAFETY: `b` lives until the completion below.
    unsafe { ch.submit(&IoRequest::write(1, 1, &v), 77) }.unwrap();
    let mut got = None;
    ch.poll(&mut |t, st| got = Some((t, st)));
    assert_eq!(got, None, "waiting for the write-back");
    let r = c.power_cut(CutMode::All, 0).unwrap();
    assert_eq!(r.lost_blocks, 2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while got.is_none() {
        ch.poll(&mut |t, st| got = Some((t, st)));
        assert!(std::time::Instant::now() < deadline);
    }
    assert_eq!(got, Some((77, IoStatus::Aborted)));
    drop(b);
    // Block 0 rewritten after the cut while the old write-back is still
    // in flight, then flushed: the new value is what the base keeps.
    assert_eq!(write_seed(&mut ch, 0, 1, 3, false), IoStatus::Success);
    assert_eq!(flush(&mut ch), IoStatus::Success);
    let mut mch = open_channel(&m).unwrap();
    assert!(holds(&mut mch, 0, 3), "the newer write won");
    assert!(
        zeroed(&mut mch, 1),
        "the aborted write never reached the base"
    );
}
