//! scsi — placeholder, see ARCHITECTURE.md.
