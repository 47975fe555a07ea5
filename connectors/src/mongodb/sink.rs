//! The MongoDB sink: collection setup, fences, and the exactly-once commit of each mode.

use std::sync::Arc;
use std::time::Duration;

use mongodb::bson::oid::ObjectId;
use mongodb::bson::{
    doc, Bson, DateTime, Document, RawArrayBuf, RawBson, RawDocument, RawDocumentBuf,
};
use mongodb::options::ClientOptions;
use mongodb::sync::{Client, Collection, Database};
use weir_engine::checkpoint::Epoch;
use weir_engine::runtime::{Sink, SinkEncoder, SinkError, SinkScope};

use super::config::{MongoSinkConfig, MongoSinkMode, TimeseriesConfig, FENCE_COLLECTION};
use super::encode::{
    frames, split_documents, DocumentEncoder, DocumentShape, RollupEncoder, RollupShape,
    EPOCH_PLACEHOLDER,
};
use super::rollup::{applied_field, rollup_updates};
use super::{is_duplicate_key, is_retryable_code, sink_error};

/// Server selection and connection timeout unless the URI sets them: a server that is down
/// turns into a retryable error this fast instead of after the driver's 30 s.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// MongoDB's `NamespaceExists` error code (a concurrent `create` won).
const NAMESPACE_EXISTS: i32 = 48;

/// Rollup updates per `update` command, and the command size aimed at (the server takes
/// 16 MiB); whichever is reached first.
const MAX_UPDATES_PER_COMMAND: usize = 1000;
const MAX_COMMAND_BYTES: usize = 8 << 20;

/// A sink writing to one MongoDB collection; see the module docs for the modes and the
/// exactly-once protocol.
pub struct MongoSink {
    name: String,
    config: MongoSinkConfig,
    scope: SinkScope,
    /// `<job>/<sink>/<task>`: the fence document's `_id`.
    owner: String,
    db: Database,
    collection: Collection<Document>,
    /// The same collection, for inserting staged documents as they are.
    raw_collection: Collection<RawDocumentBuf>,
    fences: Collection<Document>,
    time_field: Arc<str>,
    meta_field: Arc<str>,
    /// The collection exists with the configured options, and the indexes too.
    ready: bool,
    /// `recover` ran: no document tagged above the fence is left except by this process.
    recovered: bool,
    /// The epoch whose insert started and did not finish: its documents may be partly
    /// there, so a retry deletes them first.
    unfenced: Option<Epoch>,
    /// This instance's claim on the fence document (`timeseries`/`events`): set by `recover`;
    /// a fence write that no longer finds it means a newer owner of the task took over.
    holder: ObjectId,
    /// The last epoch this instance knows applied (`timeseries`/`events`).
    applied: Epoch,
    /// An applied epoch not yet written to the fence; written alongside the next insert.
    fence_behind: Option<Epoch>,
}

impl MongoSink {
    /// Prepares the sink `name` of `scope` (the client connects lazily; nothing is read or
    /// written before [`Sink::recover`]). Fails fatally when the URI is invalid, retryably when
    /// a `mongodb+srv` lookup fails.
    pub fn open(
        name: &str,
        scope: &SinkScope,
        config: &MongoSinkConfig,
    ) -> Result<MongoSink, SinkError> {
        let context = format!("sink `{name}`: MongoDB connection string");
        let mut options = ClientOptions::parse(&config.uri)
            .run()
            .map_err(|e| sink_error(&context, &e))?;
        options
            .server_selection_timeout
            .get_or_insert(DEFAULT_TIMEOUT);
        options.connect_timeout.get_or_insert(DEFAULT_TIMEOUT);
        options.app_name.get_or_insert_with(|| "weir".into());
        let client = Client::with_options(options).map_err(|e| sink_error(&context, &e))?;
        let db = client.database(&config.database);
        Ok(MongoSink {
            name: name.to_string(),
            owner: format!("{}/{name}/{}", scope.job, scope.task),
            scope: scope.clone(),
            collection: db.collection(&config.collection),
            raw_collection: db.collection(&config.collection),
            fences: db.collection(FENCE_COLLECTION),
            db,
            time_field: config.time_field().into(),
            meta_field: config.meta_field().into(),
            config: config.clone(),
            ready: false,
            recovered: false,
            unfenced: None,
            holder: ObjectId::new(),
            applied: 0,
            fence_behind: None,
        })
    }

    fn error(&self, what: &str, e: &mongodb::error::Error) -> SinkError {
        sink_error(
            &format!(
                "sink `{}` ({}.{}): {what}",
                self.name, self.config.database, self.config.collection
            ),
            e,
        )
    }

    fn fatal(&self, message: String) -> SinkError {
        SinkError::Fatal(format!("sink `{}`: {message}", self.name))
    }

    /// The last epoch committed by this (job, sink, task); 0 when none.
    fn read_fence(&self) -> Result<Epoch, SinkError> {
        let found = self
            .fences
            .find_one(doc! { "_id": &self.owner })
            .run()
            .map_err(|e| self.error("reading the fence", &e))?;
        match found.as_ref().map(|d| d.get("epoch")) {
            None => Ok(0),
            Some(Some(Bson::Int64(e))) => Ok(u64::try_from(*e).unwrap_or(0)),
            Some(Some(Bson::Int32(e))) => Ok(u64::try_from(*e).unwrap_or(0)),
            Some(_) => Err(self.fatal(format!(
                "the fence document `{}` in {}.{FENCE_COLLECTION} has no integer `epoch`; \
                 it was modified outside Weir",
                self.owner, self.config.database
            ))),
        }
    }

    fn write_fence(&self, epoch: Epoch) -> Result<(), SinkError> {
        self.fences
            .update_one(
                doc! { "_id": &self.owner },
                doc! { "$set": { "epoch": epoch_bson(epoch)?, "updated_at": DateTime::now() } },
            )
            .upsert(true)
            .run()
            .map_err(|e| self.error("writing the fence", &e))?;
        Ok(())
    }

    /// Makes this instance the fence's holder at `epoch` (`timeseries`/`events` recovery).
    fn claim_fence(&self, epoch: Epoch) -> Result<(), SinkError> {
        self.fences
            .update_one(
                doc! { "_id": &self.owner },
                doc! { "$set": {
                    "epoch": epoch_bson(epoch)?,
                    "holder": self.holder,
                    "updated_at": DateTime::now(),
                } },
            )
            .upsert(true)
            .run()
            .map_err(|e| self.error("claiming the fence", &e))?;
        Ok(())
    }

    /// Moves the fence to `epoch` while this instance still holds it; a fatal error when a
    /// newer owner of the task claimed it (this one must stop).
    fn advance_claimed_fence(&self, epoch: Epoch) -> Result<(), SinkError> {
        let result = self
            .fences
            .update_one(
                doc! { "_id": &self.owner, "holder": self.holder },
                doc! { "$set": { "epoch": epoch_bson(epoch)?, "updated_at": DateTime::now() } },
            )
            .run()
            .map_err(|e| self.error("writing the fence", &e))?;
        if result.matched_count == 0 {
            return Err(self.fatal(format!(
                "the fence `{}` in {}.{FENCE_COLLECTION} was claimed by another process (a newer \
                 owner of this task); this one stops",
                self.owner, self.config.database
            )));
        }
        Ok(())
    }

    /// The epoch tag of this (job, sink, task) at `epoch`; `epoch` is its last field.
    fn tag(&self, epoch: i64) -> Document {
        doc! {
            "job": &self.scope.job,
            "sink": &self.name,
            "task": &self.scope.task,
            "epoch": epoch,
        }
    }

    /// The staged documents with `epoch` written over the placeholder their encoder left in
    /// each tag, without decoding them; `None` when one has no placeholder (staged by an
    /// earlier version), for the caller to tag decoded documents instead.
    fn stamp_epoch(
        &self,
        staged: &[u8],
        epoch: Epoch,
    ) -> Result<Option<Vec<RawDocumentBuf>>, SinkError> {
        let corrupt =
            |e: String| self.fatal(format!("corrupt staged outputs of epoch {epoch}: {e}"));
        let stamp = i64::try_from(epoch)
            .map_err(|_| self.fatal(format!("epoch {epoch} does not fit a BSON int64")))?
            .to_le_bytes();
        let mut docs = Vec::new();
        for frame in frames(staged) {
            let frame = frame.map_err(corrupt)?;
            let raw = RawDocument::from_bytes(frame).map_err(|e| corrupt(e.to_string()))?;
            let tag = raw
                .get_document(&*self.meta_field)
                .ok()
                .and_then(|meta| meta.get_document("weir").ok());
            // The tag ends with `0x12 "epoch\0" <int64> 0x00`.
            let Some(tag) = tag.map(RawDocument::as_bytes).filter(|t| {
                t.len() >= 17
                    && t[t.len() - 16] == 0x12
                    && &t[t.len() - 15..t.len() - 9] == b"epoch\0"
                    && t[t.len() - 9..t.len() - 1] == EPOCH_PLACEHOLDER.to_le_bytes()
            }) else {
                return Ok(None);
            };
            let at = tag.as_ptr() as usize - frame.as_ptr() as usize + tag.len() - 9;
            let mut bytes = frame.to_vec();
            bytes[at..at + 8].copy_from_slice(&stamp);
            docs.push(RawDocumentBuf::from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?);
        }
        Ok(Some(docs))
    }

    /// The staged documents decoded, tagged with `epoch` and encoded again (for stagings
    /// without an epoch placeholder).
    fn tag_decoded(&self, staged: &[u8], epoch: Epoch) -> Result<Vec<RawDocumentBuf>, SinkError> {
        let docs = split_documents(staged)
            .map_err(|e| self.fatal(format!("corrupt staged outputs of epoch {epoch}: {e}")))?;
        let tag = self.tag(i64::try_from(epoch).unwrap_or(i64::MAX));
        let mut raw = Vec::with_capacity(docs.len());
        for mut doc in docs {
            match doc.get_document_mut(&*self.meta_field) {
                Ok(meta) => {
                    meta.insert("weir", tag.clone());
                }
                Err(_) => return Err(self.fatal("a staged document lacks its meta field".into())),
            }
            raw.push(
                RawDocumentBuf::from_document(&doc)
                    .map_err(|e| self.fatal(format!("cannot encode a document: {e}")))?,
            );
        }
        Ok(raw)
    }

    /// Documents of this (job, sink, task) whose epoch matches `epoch` (a value or a
    /// condition such as `{$gt: 3}`).
    fn tag_filter(&self, epoch: impl Into<Bson>) -> Document {
        let tag = format!("{}.weir", self.meta_field);
        doc! {
            format!("{tag}.job"): &self.scope.job,
            format!("{tag}.sink"): &self.name,
            format!("{tag}.task"): &self.scope.task,
            format!("{tag}.epoch"): epoch.into(),
        }
    }

    /// The collection's `listCollections` entry, if it exists.
    fn collection_info(&self) -> Result<Option<Document>, SinkError> {
        let reply = self
            .db
            .run_command(doc! {
                "listCollections": 1,
                "filter": { "name": &self.config.collection },
            })
            .run()
            .map_err(|e| self.error("listing collections", &e))?;
        let first = reply
            .get_document("cursor")
            .and_then(|c| c.get_array("firstBatch"))
            .map_err(|e| self.fatal(format!("unexpected listCollections reply: {e}")))?
            .first()
            .and_then(Bson::as_document)
            .cloned();
        Ok(first)
    }

    /// Creates the collection (with its time-series options) if missing, checks it otherwise,
    /// and creates the configured indexes. Runs once per sink.
    fn ensure_collection(&mut self) -> Result<(), SinkError> {
        if self.ready {
            return Ok(());
        }
        let expected = self.config.timeseries_options();
        let info = match self.collection_info()? {
            Some(info) => Some(info),
            None => {
                let mut create = doc! { "create": &self.config.collection };
                if let Some(ts) = &expected {
                    create.insert(
                        "timeseries",
                        doc! {
                            "timeField": &ts.time_field,
                            "metaField": &ts.meta_field,
                            "granularity": ts.granularity.as_str(),
                        },
                    );
                    if let Some(d) = ts.expire_after {
                        create.insert("expireAfterSeconds", (d.as_millis() / 1000) as i64);
                    }
                }
                match self.db.run_command(create).run() {
                    Ok(_) => {
                        tracing::info!(
                            sink = %self.name,
                            collection = %self.config.collection,
                            "created collection"
                        );
                        None
                    }
                    // Another worker created it meanwhile: check what it made.
                    Err(e) if command_code(&e) == Some(NAMESPACE_EXISTS) => {
                        self.collection_info()?
                    }
                    Err(e) => return Err(self.error("creating the collection", &e)),
                }
            }
        };
        if let Some(info) = info {
            let mismatches = option_mismatches(expected.as_ref(), &info);
            if !mismatches.is_empty() {
                let prefix = format!("sinks.{}", self.name);
                let list = mismatches
                    .iter()
                    .map(|(path, msg)| format!("{prefix}.{path}: {msg}"))
                    .collect::<Vec<_>>()
                    .join("; ");
                return Err(self.fatal(format!(
                    "collection {}.{} already exists with other options than configured: \
                     {list}. Change the sink's options to match, or drop or rename the \
                     collection",
                    self.config.database, self.config.collection
                )));
            }
        }
        for index in &self.config.indexes {
            let mut keys = Document::new();
            let mut name = String::new();
            for (field, direction) in &index.keys.0 {
                keys.insert(field.as_str(), *direction);
                if !name.is_empty() {
                    name.push('_');
                }
                name.push_str(&format!("{field}_{direction}"));
            }
            self.db
                .run_command(doc! {
                    "createIndexes": &self.config.collection,
                    "indexes": [{ "key": keys, "name": name, "unique": index.unique }],
                })
                .run()
                .map_err(|e| {
                    self.error(
                        "creating an index (an existing one on the same fields with other \
                         options needs dropping first)",
                        &e,
                    )
                })?;
        }
        self.ready = true;
        Ok(())
    }

    fn commit_documents(&mut self, epoch: Epoch, staged: &[u8]) -> Result<(), SinkError> {
        if staged.is_empty() {
            return Ok(());
        }
        if !self.recovered {
            // Committing E means every epoch before it was committed.
            self.recover(Some(epoch.saturating_sub(1)))?;
        }
        // Since `recover` this instance holds the fence, so it alone knows what was applied.
        if epoch <= self.applied {
            return Ok(());
        }
        let docs = match self.stamp_epoch(staged, epoch)? {
            Some(docs) => docs,
            None => self.tag_decoded(staged, epoch)?,
        };
        // After `recover`, documents of an epoch above `applied` exist only if this instance
        // started inserting them (or, for the first epoch after `recover`, a previous owner);
        // sparing the delete otherwise keeps a commit one insert.
        if self.unfenced == Some(epoch) {
            self.collection
                .delete_many(self.tag_filter(epoch_bson(epoch)?))
                .run()
                .map_err(|e| self.error("removing an unconfirmed attempt", &e))?;
        }
        self.unfenced = Some(epoch);
        // The fence trails by one epoch: the previous epoch's fence write runs alongside this
        // insert, so a commit costs one round trip. The fence only guards ownership and
        // replaced state; what was applied is the engine's committed epoch, and `recover`
        // deletes everything tagged after it.
        let this = &*self;
        let (inserted, fenced) = std::thread::scope(|scope| {
            let fence = this
                .fence_behind
                .map(|behind| scope.spawn(move || this.advance_claimed_fence(behind)));
            let inserted = this
                .raw_collection
                .insert_many(&docs)
                .ordered(false)
                .run()
                .map_err(|e| this.error("inserting documents", &e));
            let fenced = match fence.map(|f| f.join()) {
                None => Ok(()),
                Some(Ok(result)) => result,
                Some(Err(_)) => Err(this.fatal("the fence write panicked".into())),
            };
            (inserted, fenced)
        });
        fenced?;
        self.fence_behind = None;
        inserted?;
        self.unfenced = None;
        self.applied = epoch;
        self.fence_behind = Some(epoch);
        tracing::debug!(sink = %self.name, epoch, documents = docs.len(), "committed");
        Ok(())
    }

    fn commit_rollup(&mut self, epoch: Epoch, items: Vec<Document>) -> Result<(), SinkError> {
        let field = applied_field(&self.owner);
        let batch = rollup_updates(items, epoch, &field, self.config.latest, DateTime::now())
            .map_err(|e| self.fatal(format!("corrupt staged outputs of epoch {epoch}: {e}")))?;
        if batch.skipped > 0 {
            tracing::warn!(
                sink = %self.name,
                epoch,
                outputs = batch.skipped,
                "dead letters cannot be rolled up; send them to another sink"
            );
        }
        if batch.updates.is_empty() {
            return Ok(());
        }
        self.ensure_collection()?;
        if self.read_fence()? >= epoch {
            return Ok(());
        }
        let mut statements = RawArrayBuf::new();
        let (mut count, mut bytes, mut already) = (0, 0, 0);
        let total = batch.updates.len();
        for (i, update) in batch.updates.into_iter().enumerate() {
            let raw = RawDocumentBuf::from_document(&update)
                .map_err(|e| self.fatal(format!("cannot encode a rollup update: {e}")))?;
            bytes += raw.as_bytes().len();
            count += 1;
            statements.push(RawBson::Document(raw));
            if count == MAX_UPDATES_PER_COMMAND || bytes >= MAX_COMMAND_BYTES || i + 1 == total {
                already += self.run_updates(std::mem::take(&mut statements))?;
                (count, bytes) = (0, 0);
            }
        }
        self.write_fence(epoch)?;
        tracing::debug!(
            sink = %self.name,
            epoch,
            documents = total,
            already_applied = already,
            "committed"
        );
        Ok(())
    }

    /// Runs one unordered `update` command; returns how many statements found their document
    /// already holding the epoch.
    fn run_updates(&self, statements: RawArrayBuf) -> Result<usize, SinkError> {
        let mut command = RawDocumentBuf::new();
        command.append("update", self.config.collection.as_str());
        command.append("updates", statements);
        command.append("ordered", false);
        let reply = self
            .db
            .run_raw_command(command)
            .run()
            .map_err(|e| self.error("updating rollup documents", &e))?;
        if let Ok(wce) = reply.get_document("writeConcernError") {
            return Err(SinkError::Retryable(format!(
                "sink `{}`: write concern not satisfied: {wce}",
                self.name
            )));
        }
        let mut already = 0;
        let mut failures = Vec::new();
        for error in reply.get_array("writeErrors").into_iter().flatten() {
            let error = error.as_document();
            let code = error.and_then(|d| d.get("code")).and_then(bson_i64);
            if code.is_some_and(is_duplicate_key) {
                already += 1;
            } else {
                failures.push((code, error.cloned().unwrap_or_default()));
            }
        }
        if failures.is_empty() {
            return Ok(already);
        }
        let message = format!(
            "sink `{}`: {} rollup update(s) failed, e.g. {}",
            self.name,
            failures.len(),
            failures[0].1
        );
        if failures
            .iter()
            .all(|(code, _)| code.is_some_and(|c| is_retryable_code(c as i32)))
        {
            Err(SinkError::Retryable(message))
        } else {
            Err(SinkError::Fatal(message))
        }
    }
}

fn epoch_bson(epoch: Epoch) -> Result<Bson, SinkError> {
    i64::try_from(epoch)
        .map(Bson::Int64)
        .map_err(|_| SinkError::Fatal(format!("epoch {epoch} does not fit MongoDB's integers")))
}

fn bson_i64(v: &Bson) -> Option<i64> {
    match v {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

fn command_code(e: &mongodb::error::Error) -> Option<i32> {
    match &*e.kind {
        mongodb::error::ErrorKind::Command(c) => Some(c.code),
        _ => None,
    }
}

/// How an existing collection (its `listCollections` entry) differs from what the sink
/// wants: `expected` time-series options, or `None` for an ordinary collection. Each
/// difference is the option's path under the sink and what differs.
pub(crate) fn option_mismatches(
    expected: Option<&TimeseriesConfig>,
    info: &Document,
) -> Vec<(String, String)> {
    let kind = info.get_str("type").unwrap_or("collection");
    let options = info.get_document("options").ok();
    let actual_ts = options.and_then(|o| o.get_document("timeseries").ok());
    let mut out = Vec::new();
    let Some(ts) = expected else {
        if kind == "timeseries" || actual_ts.is_some() {
            out.push((
                "mode".into(),
                "the collection is a time-series collection; this sink needs an ordinary one \
                 (mode `rollup`, or `events` without `timeseries`)"
                    .into(),
            ));
        } else if kind != "collection" {
            out.push((
                "collection".into(),
                format!("it is a {kind}, not a collection"),
            ));
        }
        return out;
    };
    let Some(actual) = actual_ts else {
        out.push((
            "timeseries".into(),
            format!("the collection is an ordinary {kind}, not a time-series collection"),
        ));
        return out;
    };
    let text = |d: &Document, k: &str| d.get_str(k).ok().map(str::to_string);
    let mut compare = |path: &str, option: &str, want: Option<String>, have: Option<String>| {
        if want != have {
            let show = |v: &Option<String>| v.as_ref().map_or("none".into(), |v| format!("`{v}`"));
            out.push((
                path.to_string(),
                format!(
                    "the collection's {option} is {}, the sink's {}",
                    show(&have),
                    show(&want)
                ),
            ));
        }
    };
    compare(
        "timeseries.time_field",
        "timeField",
        Some(ts.time_field.clone()),
        text(actual, "timeField"),
    );
    compare(
        "timeseries.meta_field",
        "metaField",
        Some(ts.meta_field.clone()),
        text(actual, "metaField"),
    );
    compare(
        "timeseries.granularity",
        "granularity",
        Some(ts.granularity.as_str().to_string()),
        text(actual, "granularity"),
    );
    compare(
        "timeseries.expire_after",
        "expireAfterSeconds",
        ts.expire_after.map(|d| (d.as_millis() / 1000).to_string()),
        options
            .and_then(|o| o.get("expireAfterSeconds"))
            .and_then(bson_i64)
            .map(|s| s.to_string()),
    );
    out
}

impl Sink for MongoSink {
    fn name(&self) -> &str {
        &self.name
    }

    fn encoder(&self) -> Box<dyn SinkEncoder> {
        match self.config.mode {
            MongoSinkMode::Timeseries | MongoSinkMode::Events => Box::new(DocumentEncoder::new(
                DocumentShape {
                    time_field: self.time_field.clone(),
                    meta_field: self.meta_field.clone(),
                    meta_fields: self.config.meta_fields.clone().into(),
                },
                Some(self.tag(EPOCH_PLACEHOLDER)),
            )),
            MongoSinkMode::Rollup => Box::new(RollupEncoder::new(RollupShape {
                entity_field: self
                    .config
                    .entity_field
                    .as_deref()
                    .unwrap_or_default()
                    .into(),
                counters: self
                    .config
                    .counters
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect::<Vec<_>>()
                    .into(),
                sum_fields: self.config.sum_fields.clone().into(),
                keep_latest: self.config.latest.is_some(),
                time_field: self.time_field.clone(),
            })),
        }
    }

    /// Creates or checks the collection and its indexes, then reconciles with `committed`:
    /// documents tagged with a later epoch of this (job, sink, task) are deleted and the fence
    /// is moved back to `committed` (the engine re-commits the epoch after it). Rollup updates
    /// cannot be undone; they are kept, and the re-commit of the next epoch skips what landed.
    /// A fence more than one epoch ahead of `committed` means the state was replaced: fatal.
    fn recover(&mut self, committed: Option<Epoch>) -> Result<(), SinkError> {
        self.ensure_collection()?;
        let fence = self.read_fence()?;
        let committed = committed.unwrap_or(0);
        if fence > committed.saturating_add(1) {
            return Err(self.fatal(format!(
                "{}.{FENCE_COLLECTION} says epoch {fence} of `{}` was committed but the state \
                 only knows epoch {committed}; was the state directory replaced? To start \
                 over, delete that fence document (and this task's documents in {}.{})",
                self.config.database, self.owner, self.config.database, self.config.collection
            )));
        }
        if self.config.mode != MongoSinkMode::Rollup {
            let removed = self
                .collection
                .delete_many(self.tag_filter(doc! { "$gt": epoch_bson(committed)? }))
                .run()
                .map_err(|e| self.error("removing unconfirmed epochs", &e))?;
            if removed.deleted_count > 0 {
                tracing::info!(
                    sink = %self.name,
                    documents = removed.deleted_count,
                    after = committed,
                    "removed documents of unconfirmed epochs"
                );
            }
            // A previous holder still running (a zombie) fails its next fence write.
            self.claim_fence(committed)?;
        }
        self.recovered = true;
        // A previous owner still running when this one took over (a stalled worker) may
        // insert the epoch after `committed` after the delete above: the first commit of that
        // epoch deletes its tag again just before inserting.
        self.unfenced = (self.config.mode != MongoSinkMode::Rollup).then(|| committed + 1);
        self.applied = committed;
        self.fence_behind = None;
        Ok(())
    }

    /// Applies epoch `epoch` once.
    ///
    /// `timeseries`/`events`: nothing when this instance applied it (or a later one) since
    /// `recover`; otherwise inserts the documents (after deleting a failed attempt's) while
    /// moving the fence to the previous applied epoch; fatal when another process claimed the
    /// fence. Without an earlier `recover`, it first recovers as if `epoch - 1` were the last
    /// committed epoch.
    ///
    /// `rollup`: nothing when the fence holds the epoch; otherwise applies the updates
    /// (skipping documents that already hold the epoch), then advances the fence.
    ///
    /// Server unavailability is retryable; a corrupt staging or a rejected write is not.
    fn commit(&mut self, epoch: Epoch, staged: &[u8]) -> Result<(), SinkError> {
        match self.config.mode {
            MongoSinkMode::Rollup => {
                let docs = split_documents(staged).map_err(|e| {
                    self.fatal(format!("corrupt staged outputs of epoch {epoch}: {e}"))
                })?;
                if docs.is_empty() {
                    return Ok(());
                }
                self.commit_rollup(epoch, docs)
            }
            MongoSinkMode::Timeseries | MongoSinkMode::Events => {
                self.commit_documents(epoch, staged)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mongodb::config::Granularity;

    #[test]
    fn mismatches_name_each_option() {
        let want = TimeseriesConfig {
            time_field: "ts".into(),
            meta_field: "meta".into(),
            granularity: Granularity::Minutes,
            expire_after: Some(weir_engine::topology::Duration::from_millis(3_600_000)),
        };
        let same = doc! {
            "name": "c", "type": "timeseries",
            "options": {
                "timeseries": {"timeField": "ts", "metaField": "meta", "granularity": "minutes", "bucketMaxSpanSeconds": 86400},
                "expireAfterSeconds": 3600_i64,
            },
        };
        assert!(option_mismatches(Some(&want), &same).is_empty());
        let other = doc! {
            "name": "c", "type": "timeseries",
            "options": {"timeseries": {"timeField": "time", "granularity": "hours"}},
        };
        let paths: Vec<String> = option_mismatches(Some(&want), &other)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(
            paths,
            [
                "timeseries.time_field",
                "timeseries.meta_field",
                "timeseries.granularity",
                "timeseries.expire_after"
            ]
        );
        let plain = doc! {"name": "c", "type": "collection", "options": {}};
        assert_eq!(option_mismatches(Some(&want), &plain)[0].0, "timeseries");
        assert!(option_mismatches(None, &plain).is_empty());
        assert_eq!(option_mismatches(None, &same)[0].0, "mode");
    }
}
