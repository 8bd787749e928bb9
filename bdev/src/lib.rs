//! bdev — placeholder, see ARCHITECTURE.md.
