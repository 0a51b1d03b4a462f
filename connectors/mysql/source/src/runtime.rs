//! State shared by the snapshot and the stream of one `run`: settings, the
//! server's facts, a SQL connection for `information_schema`, and the caches
//! of column plans.
//!
//! Plans are cached per table together with the TABLE_MAP bytes that produced
//! them: MariaDB repeats the TABLE_MAP before every transaction, so the plan
//! (and the pre-rendered schema block) is rebuilt only when those bytes
//! change — after an ALTER TABLE. `information_schema` answers describe the
//! table *now*; they are cached per table and dropped on every DDL query
//! event so the next TABLE_MAP sees the new definition.

use crate::binlog::{Flavour, TableMap};
use crate::charset::Collations;
use crate::client::{self, ConnSpec, ServerInfo};
use crate::convert::{plan_from_info, plan_from_map, Plan, PlanOptions, TableInfo};
use crate::error::SourceError;
use mysql_async::Conn;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tidemark_core::config::{PipelineConfig, SnapshotMode};
use tidemark_core::envelope::{Encoder, Naming};

/// The pipeline settings this connector uses.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pipeline name.
    pub pipeline: String,
    /// `db.table` globs.
    pub tables: Vec<String>,
    /// Our replica server id.
    pub server_id: u32,
    /// Heartbeat period requested from the server; the stream times out after three.
    pub heartbeat: Duration,
    /// Rows per snapshot chunk.
    pub chunk: u64,
    /// Initial snapshot mode.
    pub snapshot: SnapshotMode,
    /// TINYINT(1) as bool.
    pub tinyint1_as_bool: bool,
    /// Connection settings.
    pub spec: ConnSpec,
}

impl Settings {
    /// Reads the source section of a pipeline.
    pub fn from_pipeline(p: &PipelineConfig) -> Result<Settings, SourceError> {
        let s = &p.source;
        let server_id = s
            .server_id
            .filter(|id| *id != 0)
            .ok_or_else(|| SourceError::Config {
                message: "source.server_id is required: a replica id unique on the server".into(),
            })?;
        Ok(Settings {
            pipeline: p.name.clone(),
            tables: s.tables.clone(),
            server_id,
            heartbeat: Duration::from_secs(s.heartbeat_secs.clamp(1, 3600)),
            chunk: s.snapshot_chunk_size.max(1),
            snapshot: s.snapshot,
            tinyint1_as_bool: s.tinyint1_as_bool,
            spec: ConnSpec::parse(&s.url)?,
        })
    }

    /// Whether `db.table` is captured.
    pub fn selected(&self, db: &str, table: &str) -> bool {
        tidemark_core::config::table_selected(&self.tables, db, table)
    }

    /// The health component name.
    pub fn component(&self) -> String {
        format!("{}/source", self.pipeline)
    }
}

/// Everything the snapshot and the stream share within one run.
pub struct Runtime {
    /// Settings.
    pub settings: Settings,
    /// Envelope names.
    pub naming: Naming,
    /// Server facts.
    pub server: ServerInfo,
    /// Collation → charset map.
    pub collations: Collations,
    /// SQL connection for `information_schema`, binlog sizes.
    pub meta: Conn,
    /// Envelope encoder (reused buffer).
    pub encoder: Encoder,
    plans: HashMap<(String, String), (Vec<u8>, Arc<Plan>)>,
    infos: HashMap<(String, String), Option<TableInfo>>,
}

impl Runtime {
    /// Connects the metadata connection and reads the server's facts.
    pub async fn connect(settings: Settings, naming: Naming) -> Result<Runtime, SourceError> {
        let mut meta = settings.spec.sql().await?;
        let server = client::server_info(&mut meta).await?;
        let collations = client::collations(&mut meta).await?;
        Ok(Runtime {
            settings,
            naming,
            server,
            collations,
            meta,
            encoder: Encoder::new(),
            plans: HashMap::new(),
            infos: HashMap::new(),
        })
    }

    /// Plan options for this server.
    pub fn plan_options(&self) -> PlanOptions {
        PlanOptions {
            flavour: self.server.flavour,
            tinyint1_as_bool: self.settings.tinyint1_as_bool,
        }
    }

    /// Server family.
    pub fn flavour(&self) -> Flavour {
        self.server.flavour
    }

    /// The cached `information_schema` description of a table.
    pub async fn info(&mut self, db: &str, table: &str) -> Result<Option<TableInfo>, SourceError> {
        let key = (db.to_owned(), table.to_owned());
        if let Some(i) = self.infos.get(&key) {
            return Ok(i.clone());
        }
        let info = client::table_info(&mut self.meta, self.server.flavour, db, table).await?;
        self.infos.insert(key, info.clone());
        Ok(info)
    }

    /// The plan for a TABLE_MAP, rebuilt only when its definition bytes changed.
    pub async fn plan_for_map(
        &mut self,
        map: &TableMap,
        definition: &[u8],
    ) -> Result<Arc<Plan>, SourceError> {
        let key = (map.db.clone(), map.table.clone());
        if let Some((def, plan)) = self.plans.get(&key) {
            if def.as_slice() == definition {
                return Ok(plan.clone());
            }
        }
        let info = self.info(&map.db, &map.table).await?;
        let plan = Arc::new(plan_from_map(
            &self.naming,
            map,
            info.as_ref(),
            &self.collations,
            self.plan_options(),
        )?);
        tracing::info!(
            pipeline = %self.settings.pipeline,
            table = %plan.meta.qualified_name(),
            schema_version = %plan.meta.version,
            columns = plan.meta.columns.len(),
            "table plan built"
        );
        self.plans.insert(key, (definition.to_vec(), plan.clone()));
        Ok(plan)
    }

    /// Any plan for a table (TRUNCATE): the cached stream plan, else one from
    /// `information_schema`; `None` if the table does not exist.
    pub async fn plan_for_table(
        &mut self,
        db: &str,
        table: &str,
    ) -> Result<Option<Arc<Plan>>, SourceError> {
        if let Some((_, plan)) = self.plans.get(&(db.to_owned(), table.to_owned())) {
            return Ok(Some(plan.clone()));
        }
        let info = self.info(db, table).await?;
        Ok(info.map(|i| {
            Arc::new(plan_from_info(
                &self.naming,
                db,
                table,
                &i,
                self.plan_options(),
            ))
        }))
    }

    /// Forgets every table description (after DDL).
    pub fn invalidate(&mut self) {
        self.infos.clear();
        self.plans.clear();
    }
}
