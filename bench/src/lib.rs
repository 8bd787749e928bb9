//! bench — placeholder, see ARCHITECTURE.md.
