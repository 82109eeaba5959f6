//! assim-probe
