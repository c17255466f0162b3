//! The one-shot commands of the CLI and the kubectl plugin (`receipt`,
//! `replay-tombstones`, `drill`, `plan`, `render-privacy-policy`): they read
//! objects from files or the API server and call the domain modules.

pub mod drill;
pub mod erasure;
pub mod restore_drill;
pub mod retention;
