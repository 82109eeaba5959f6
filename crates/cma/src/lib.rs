//! assim-cma
