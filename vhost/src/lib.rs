//! vhost — placeholder, see ARCHITECTURE.md.
