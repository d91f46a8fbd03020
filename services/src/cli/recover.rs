//! `strata recover`: rebuilds a lost catalog from the bucket alone.
//!
//! Runs offline, against the object store and a new, empty catalog (no broker needed): reads
//! the newest catalog snapshot and every segment object's footer, and fills the catalog so
//! that brokers started on it serve every committed record at its original offset (see
//! [`strata_storage::recovery`]).

use std::sync::Arc;

use anyhow::{Context, Result};
use clap::Args;
use strata_storage::catalog::{Catalog, SqlCatalog};
use strata_storage::objects::ObjectStorage;
use strata_storage::recovery;

use super::output::{print, progress, table};

/// `strata recover` flags.
#[derive(Debug, Args)]
pub struct RecoverArgs {
    /// The object store holding the data: `s3://bucket/prefix`, `gs://…`, `az://…` or
    /// `file:///path` (the same URL the brokers use).
    #[arg(long, env = "STRATA_OBJECTS")]
    pub objects: String,
    /// The catalog to fill: a new PostgreSQL database or SQLite file (`postgres://…`,
    /// `sqlite://PATH`). It must hold no topics.
    #[arg(long, env = "STRATA_CATALOG")]
    pub catalog: String,
}

/// Runs a recovery and prints what it rebuilt.
pub async fn run(args: RecoverArgs) -> Result<()> {
    let objects = ObjectStorage::from_url(&args.objects)
        .with_context(|| format!("cannot open the object store at {}", args.objects))?;
    let catalog: Arc<dyn Catalog> = Arc::new(
        SqlCatalog::connect(&args.catalog)
            .await
            .with_context(|| format!("cannot open the catalog at {}", args.catalog))?,
    );
    let bar = progress(None, "reading segment footers");
    let report = recovery::recover(&objects, catalog.as_ref(), |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .context("recovery failed; the catalog was left unchanged")?;
    bar.finish_and_clear();
    let mut t = table(["WHAT", "COUNT"]);
    t.add_row([
        "snapshot".to_string(),
        report.snapshot.clone().unwrap_or_else(|| {
            "none found: topic names, group offsets and producer state are lost".into()
        }),
    ]);
    t.add_row([
        "segment objects read".to_string(),
        report.objects_read.to_string(),
    ]);
    t.add_row([
        "objects holding live data".to_string(),
        report.objects_kept.to_string(),
    ]);
    t.add_row(["extents".to_string(), report.extents.to_string()]);
    t.add_row(["records".to_string(), report.records.to_string()]);
    t.add_row(["topics".to_string(), report.topics.to_string()]);
    print(&t);
    for key in &report.objects_unreadable {
        eprintln!("warning: skipped segment object '{key}': its footer is unreadable");
    }
    for name in &report.unnamed_topics {
        eprintln!(
            "warning: the snapshot does not name a topic found in the objects; restored as '{name}' (rename by re-creating it and copying, or keep the name)"
        );
    }
    println!(
        "catalog rebuilt: start the brokers with --catalog {}",
        args.catalog
    );
    Ok(())
}
