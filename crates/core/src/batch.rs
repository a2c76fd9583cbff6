//! The batching policy. (Filled in below.)
