//! The retention section of the privacy policy, rendered from the tier
//! table and nothing else: the text and the database cannot disagree
//! because both are projections of the same RetentionPolicy (seed 000,
//! failure mode 2). Every number in the text is a number of the policy;
//! nothing here can state a longer retention than the YAML.
//!
//! One document model renders to Markdown and HTML; JSON carries the same
//! facts as data. The operator publishes the three on every accepted change
//! and `archiver-operator render-privacy-policy` prints the same bytes at
//! build time.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::ranges::{history_days, rejects_days};
use super::tiers::{Tier, is_best_effort, policy_hash};
use crate::api::RetentionPolicySpec;
use crate::api::retention_policy::TierRetention;

/// Output formats of the rendered section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Markdown,
    Json,
    Html,
}

impl Format {
    pub const ALL: [Format; 3] = [Format::Markdown, Format::Json, Format::Html];

    /// Key of the published ConfigMap (and file name of the golden files).
    pub fn key(self) -> &'static str {
        match self {
            Self::Markdown => "retention.md",
            Self::Json => "retention.json",
            Self::Html => "retention.html",
        }
    }
}

/// Renders the section in `format`. `generation` is the RetentionPolicy's
/// `metadata.generation` when known (the operator knows it; a file in git
/// usually does not carry one).
pub fn render(spec: &RetentionPolicySpec, generation: Option<i64>, format: Format) -> String {
    match format {
        Format::Markdown => to_markdown(&document(spec, generation)),
        Format::Html => to_html(&document(spec, generation)),
        Format::Json => to_json(spec, generation),
    }
}

/// Every format, keyed as published.
pub(crate) fn render_all(
    spec: &RetentionPolicySpec,
    generation: Option<i64>,
) -> BTreeMap<String, String> {
    Format::ALL
        .into_iter()
        .map(|format| (format.key().to_string(), render(spec, generation, format)))
        .collect()
}

/// How a tier is named to customers.
fn tier_label(tier: Tier) -> &'static str {
    match tier {
        Tier::Public => "Public (free)",
        Tier::Author => "Author",
        Tier::Team => "Team",
        Tier::Enterprise => "Enterprise",
    }
}

/// The plan's short name, inside sentences.
fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Public => "Public",
        Tier::Author => "Author",
        Tier::Team => "Team",
        Tier::Enterprise => "Enterprise",
    }
}

/// `2555` -> `2,555`.
fn thousands(n: u32) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn days(n: u32) -> String {
    if n == 1 {
        "1 day".into()
    } else {
        format!("{} days", thousands(n))
    }
}

/// One cell of the table: the window, marked when the tier is best effort.
fn window_cell(retention: &TierRetention, window_days: u32) -> String {
    if is_best_effort(retention) {
        format!("up to {}, best effort", days(window_days))
    } else {
        days(window_days)
    }
}

/// The per-minute cell of the enterprise tier: its window, and the contract
/// ceiling when contracts may extend it.
fn enterprise_minute_cell(retention: &TierRetention) -> String {
    let base = window_cell(retention, retention.per_minute_days);
    match retention.contractual_cap_days {
        Some(cap) if cap > retention.per_minute_days => {
            format!("{base}; up to {} under a written contract", days(cap))
        }
        _ => base,
    }
}

// ------------------------------------------------------------------ model

/// Inline text: plain, bold, or code.
#[derive(Debug, Clone)]
enum Span {
    Text(String),
    Strong(String),
    Code(String),
}

#[derive(Debug, Clone)]
enum Block {
    /// Hidden note for whoever edits the page by hand.
    Comment(String),
    Heading(u8, String),
    Paragraph(Vec<Span>),
    Table {
        header: Vec<String>,
        rows: Vec<Vec<String>>,
    },
    List(Vec<Vec<Span>>),
}

struct Document {
    hash: String,
    blocks: Vec<Block>,
}

fn text(s: impl Into<String>) -> Span {
    Span::Text(s.into())
}

fn document(spec: &RetentionPolicySpec, generation: Option<i64>) -> Document {
    let tiers = &spec.tiers;
    let hash = policy_hash(tiers);
    let mut blocks = vec![
        Block::Comment(
            "Rendered by archiver-operator from the RetentionPolicy tier table. Do not edit by hand: change the policy."
                .into(),
        ),
        Block::Heading(2, "How long we keep monitoring data".into()),
    ];
    let mut version = vec![
        text("Retention policy version "),
        Span::Code(format!("sha256:{hash}")),
    ];
    if let Some(generation) = generation {
        version.push(text(format!(" (generation {generation})")));
    }
    version.push(text("."));
    blocks.push(Block::Paragraph(version));
    blocks.push(Block::Paragraph(vec![
        text(
            "We keep the uptime history of the servers you monitor for a fixed period that depends on the plan \
             your account was on ",
        ),
        Span::Strong("when the data was recorded".into()),
        text(
            ". Changing plans later does not change how long earlier data is kept. When the period ends, the \
             data is deleted from our database by the next daily deletion run; it is not hidden or flagged \
             instead of deleted.",
        ),
    ]));

    let mut rows = Vec::new();
    for tier in Tier::ALL {
        let retention = tier.retention(tiers);
        let minute = if tier == Tier::Enterprise {
            enterprise_minute_cell(retention)
        } else {
            window_cell(retention, retention.per_minute_days)
        };
        rows.push(vec![
            tier_label(tier).to_string(),
            minute,
            window_cell(retention, retention.daily_days),
            window_cell(retention, retention.monthly_days),
        ]);
    }
    blocks.push(Block::Table {
        header: vec![
            "Plan".into(),
            "Per-minute check results".into(),
            "Daily summaries".into(),
            "Monthly summaries".into(),
        ],
        rows,
    });

    let mut notes = Vec::new();
    let best_effort: Vec<&str> = Tier::ALL
        .into_iter()
        .filter(|tier| is_best_effort(tier.retention(tiers)))
        .map(tier_name)
        .collect();
    if !best_effort.is_empty() {
        let noun = if best_effort.len() == 1 {
            "plan"
        } else {
            "plans"
        };
        notes.push(vec![
            Span::Strong("Best effort".into()),
            text(format!(
                " ({} {noun}): data is kept for at most the period shown and may be deleted earlier; we do \
                 not guarantee that it stays available for the whole period.",
                best_effort.join(", ")
            )),
        ]);
    }
    let enterprise = &tiers.enterprise;
    if let Some(cap) = enterprise
        .contractual_cap_days
        .filter(|cap| *cap > enterprise.per_minute_days)
    {
        notes.push(vec![
            Span::Strong("Enterprise contracts".into()),
            text(format!(
                ": per-minute check results are kept longer than {} only under a written agreement, and \
                 never longer than {}.",
                days(enterprise.per_minute_days),
                days(cap)
            )),
        ]);
    }
    notes.push(vec![text(
        "A daily or monthly summary is deleted once the whole day or month it covers is past its period.",
    )]);
    notes.push(vec![
        Span::Strong("Outage clusters".into()),
        text(format!(
            " (registry-wide outages seen across accounts) are kept for {}, the longest daily-summary period \
             of any plan. They identify accounts only by salted one-way hashes.",
            days(history_days(tiers))
        )),
    ]);
    notes.push(vec![
        Span::Strong("Unreadable check results".into()),
        text(format!(
            " (malformed ones we could not store) are kept for {}, the shortest per-minute period of any \
             plan, so we can fix what produced them.",
            days(rejects_days(tiers))
        )),
    ]);
    blocks.push(Block::List(notes));

    let privacy = &spec.privacy_policy;
    blocks.push(Block::Heading(
        3,
        "Erasure requests (GDPR Article 17)".into(),
    ));
    blocks.push(Block::Paragraph(vec![text(format!(
        "You can ask us to erase your data at any time. We answer every erasure request within {}. \
         Contact: {}.",
        days(privacy.article17_response_days),
        privacy.contact
    ))]));
    blocks.push(Block::Paragraph(vec![text(
        "An erasure deletes your per-minute check results, your daily and monthly summaries and every cached \
         copy in one step. What remains afterwards:",
    )]));
    blocks.push(Block::List(vec![
        vec![
            Span::Strong("The tombstone record".into()),
            text(
                ": your account identifier, the server, the time and the reason of the erasure. We keep it as \
                 evidence that the erasure was carried out (GDPR Article 5(2)) and to apply the erasure again \
                 if a backup is ever restored.",
            ),
        ],
        vec![
            Span::Strong("Anonymous outage-cluster counts".into()),
            text(": how many accounts a registry-wide outage affected. Your account's salted hash in these records is replaced by the word "),
            Span::Code("tombstone".into()),
            text(", so they no longer identify you."),
        ],
    ]));
    Document { hash, blocks }
}

// --------------------------------------------------------------- markdown

/// Escapes characters Markdown would read as markup (and `|`, which would
/// end a table cell).
fn escape_markdown(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(
            c,
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '#'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn markdown_spans(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|span| match span {
            Span::Text(s) => escape_markdown(s),
            Span::Strong(s) => format!("**{}**", escape_markdown(s)),
            Span::Code(s) => format!("`{s}`"),
        })
        .collect()
}

fn to_markdown(document: &Document) -> String {
    let mut out = String::new();
    for block in &document.blocks {
        match block {
            Block::Comment(s) => {
                let _ = writeln!(out, "<!-- {s} -->");
            }
            Block::Heading(level, s) => {
                let _ = writeln!(
                    out,
                    "{} {}",
                    "#".repeat(usize::from(*level)),
                    escape_markdown(s)
                );
            }
            Block::Paragraph(spans) => {
                let _ = writeln!(out, "{}", markdown_spans(spans));
            }
            Block::Table { header, rows } => {
                let line = |cells: &[String]| {
                    let escaped: Vec<String> = cells.iter().map(|c| escape_markdown(c)).collect();
                    format!("| {} |", escaped.join(" | "))
                };
                let _ = writeln!(out, "{}", line(header));
                let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
                for row in rows {
                    let _ = writeln!(out, "{}", line(row));
                }
            }
            Block::List(items) => {
                for item in items {
                    let _ = writeln!(out, "- {}", markdown_spans(item));
                }
            }
        }
        out.push('\n');
    }
    // One trailing newline.
    while out.ends_with("\n\n") {
        out.pop();
    }
    out
}

// ------------------------------------------------------------------- html

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

fn html_spans(spans: &[Span]) -> String {
    spans
        .iter()
        .map(|span| match span {
            Span::Text(s) => escape_html(s),
            Span::Strong(s) => format!("<strong>{}</strong>", escape_html(s)),
            Span::Code(s) => format!("<code>{}</code>", escape_html(s)),
        })
        .collect()
}

fn to_html(document: &Document) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "<section class=\"retention-policy\" data-policy-hash=\"sha256:{}\">",
        escape_html(&document.hash)
    );
    for block in &document.blocks {
        match block {
            Block::Comment(s) => {
                // `--` may not appear inside an HTML comment.
                let _ = writeln!(out, "<!-- {} -->", s.replace("--", "- -"));
            }
            Block::Heading(level, s) => {
                let _ = writeln!(out, "<h{level}>{}</h{level}>", escape_html(s));
            }
            Block::Paragraph(spans) => {
                let _ = writeln!(out, "<p>{}</p>", html_spans(spans));
            }
            Block::Table { header, rows } => {
                out.push_str("<table>\n<thead>\n<tr>");
                for cell in header {
                    let _ = write!(out, "<th>{}</th>", escape_html(cell));
                }
                out.push_str("</tr>\n</thead>\n<tbody>\n");
                for row in rows {
                    out.push_str("<tr>");
                    for cell in row {
                        let _ = write!(out, "<td>{}</td>", escape_html(cell));
                    }
                    out.push_str("</tr>\n");
                }
                out.push_str("</tbody>\n</table>\n");
            }
            Block::List(items) => {
                out.push_str("<ul>\n");
                for item in items {
                    let _ = writeln!(out, "<li>{}</li>", html_spans(item));
                }
                out.push_str("</ul>\n");
            }
        }
    }
    out.push_str("</section>\n");
    out
}

// ------------------------------------------------------------------- json

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonSection<'a> {
    /// Version of this document's shape.
    schema: &'static str,
    policy_hash: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<i64>,
    tiers: Vec<JsonTier>,
    /// Days the cross-tenant outage clusters are kept.
    suppression_cluster_history_days: u32,
    /// Days a check result that could not be stored is kept.
    rejected_check_result_days: u32,
    /// How often expired data is deleted.
    deletion_schedule: &'static str,
    article17: JsonArticle17<'a>,
    survives_erasure: Vec<JsonSurvivor>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonTier {
    tier: &'static str,
    label: &'static str,
    per_minute_days: u32,
    daily_days: u32,
    monthly_days: u32,
    best_effort: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    contractual_cap_days: Option<u32>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonArticle17<'a> {
    response_days: u32,
    contact: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonSurvivor {
    what: &'static str,
    description: &'static str,
}

fn to_json(spec: &RetentionPolicySpec, generation: Option<i64>) -> String {
    let tiers = &spec.tiers;
    let section = JsonSection {
        schema: "archiver.uptime.dev/privacy-retention/v1",
        policy_hash: format!("sha256:{}", policy_hash(tiers)),
        generation,
        tiers: Tier::ALL
            .into_iter()
            .map(|tier| {
                let retention = tier.retention(tiers);
                JsonTier {
                    tier: tier.as_str(),
                    label: tier_label(tier),
                    per_minute_days: retention.per_minute_days,
                    daily_days: retention.daily_days,
                    monthly_days: retention.monthly_days,
                    best_effort: is_best_effort(retention),
                    contractual_cap_days: if tier == Tier::Enterprise {
                        retention.contractual_cap_days
                    } else {
                        None
                    },
                }
            })
            .collect(),
        suppression_cluster_history_days: history_days(tiers),
        rejected_check_result_days: rejects_days(tiers),
        deletion_schedule: "daily",
        article17: JsonArticle17 {
            response_days: spec.privacy_policy.article17_response_days,
            contact: &spec.privacy_policy.contact,
        },
        survives_erasure: vec![
            JsonSurvivor {
                what: "tombstone",
                description: "The record that the erasure happened (account, server, time, reason), kept as evidence and to re-apply the erasure after a backup restore.",
            },
            JsonSurvivor {
                what: "suppression-cluster-counts",
                description: "Anonymous counts of accounts affected by registry-wide outages; the erased account's salted hash is replaced by 'tombstone'.",
            },
        ],
    };
    // Serializing plain structs of strings and integers cannot fail.
    let mut json = serde_json::to_string_pretty(&section).unwrap_or_default();
    json.push('\n');
    json
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example() -> RetentionPolicySpec {
        crate::api::retention_policy::example_spec()
    }

    #[test]
    fn numbers_get_thousands_separators() {
        assert_eq!(thousands(7), "7");
        assert_eq!(thousands(365), "365");
        assert_eq!(thousands(2555), "2,555");
        assert_eq!(thousands(1_000_000), "1,000,000");
        assert_eq!(days(1), "1 day");
    }

    #[test]
    fn user_text_cannot_inject_markup() {
        let mut spec = example();
        spec.privacy_policy.contact = "<script>alert(1)</script> | *x*".into();
        let html = render(&spec, None, Format::Html);
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
        let markdown = render(&spec, None, Format::Markdown);
        assert!(
            markdown.contains(r"\<script\>alert(1)\</script\> \| \*x\*"),
            "{markdown}"
        );
        let json: serde_json::Value =
            serde_json::from_str(&render(&spec, None, Format::Json)).unwrap();
        assert_eq!(
            json["article17"]["contact"],
            "<script>alert(1)</script> | *x*"
        );
    }

    #[test]
    fn the_generation_appears_only_when_known() {
        let spec = example();
        assert!(render(&spec, Some(4), Format::Markdown).contains("(generation 4)"));
        assert!(!render(&spec, None, Format::Markdown).contains("generation"));
        assert!(!render(&spec, None, Format::Json).contains("generation"));
    }
}
