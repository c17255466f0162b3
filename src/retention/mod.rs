//! Retention by tier: the RetentionPolicy in git is the only source of truth
//! for how long history is kept. The database is pruned to it and the
//! privacy-policy retention text is rendered from it.
//!
//! - [`tiers`]: the four tiers, the tables they govern, the policy hash;
//! - [`ranges`]: which stretches of time are past retention (pure);
//! - [`guard`]: the shrink guard, which holds a change that shortens a
//!   window too much until it is confirmed (pure);
//! - [`items`], [`enforce`]: capped, resumable per-row deletes in the window;
//! - [`count`]: expired rows still present (drift, held shrinks, `plan`);
//! - [`privacy`]: the privacy-policy section in Markdown, JSON and HTML;
//! - [`plan`]: what a new policy file would change, for a pull request;
//! - [`store`]: the tables of migration 0009 and the audit rows;
//! - [`commands`]: the `plan` and `render-privacy-policy` commands;
//! - `reconciler`: the `RetentionPolicy` adapter.
//!
//! A missing, conflicting or broken policy never causes a delete.

pub mod count;
pub mod directory;
pub mod enforce;
pub mod guard;
pub mod items;
pub mod plan;
pub mod privacy;
pub mod ranges;
pub mod store;
pub mod tiers;

use crate::api::common::WindowError;

/// Errors of retention work, each with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error("{context}: {source}")]
    Database {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    #[error("the stored enforced tier table cannot be read or written: {0}")]
    StoredPolicy(#[source] serde_json::Error),
    #[error("enforcement window: {0}")]
    Window(#[from] WindowError),
    #[error("internal error: {0}")]
    Invariant(String),
}

pub(crate) fn db(context: impl Into<String>) -> impl FnOnce(sqlx::Error) -> RetentionError {
    let context = context.into();
    move |source| RetentionError::Database { context, source }
}
