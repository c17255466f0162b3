//! Support shared by the end-to-end tests against a real Kubernetes control plane.

pub mod argocd_lua;
pub mod control_plane;
