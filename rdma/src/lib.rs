//! rdma — placeholder, see ARCHITECTURE.md.
