//! reactor — placeholder, see ARCHITECTURE.md.
