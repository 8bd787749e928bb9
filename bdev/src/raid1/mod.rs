//! RAID1 (md semantics). Being written.
