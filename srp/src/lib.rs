//! srp — placeholder, see ARCHITECTURE.md.
