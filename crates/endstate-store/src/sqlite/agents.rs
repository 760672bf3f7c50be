//! The agent link's writes and reads: join tokens, enrolled identities, reachability, desired-set
//! generations and observation batches. Writes run on the writer thread, inside its batch
//! transaction, like every other write.

use std::sync::Arc;

use endstate_types::HostName;
use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::StoreError;
use crate::model::{AgentRecord, InstanceRecord, JoinTokenRow, NewEvent};
use crate::sqlite::writer::{self, AgentOp, AgentReply};

const AGENT_COLUMNS: &str =
    "host, enrolled_ms, revoked_ms, cert_serial, prev_serial, reachable, last_seq, generation, desired_digest";

/// Applies one agent write.
pub(crate) fn apply(conn: &Connection, op: &AgentOp) -> Result<AgentReply, StoreError> {
    match op {
        AgentOp::PutJoinToken(token) => put_join_token(conn, token).map(|()| AgentReply::Done),
        AgentOp::Enrol {
            token_hash,
            at_ms,
            host,
            serial,
            events,
        } => {
            writer::validate_events(events)?;
            let token = find_join_token(conn, token_hash)?.ok_or_else(|| StoreError::NotFound {
                what: "join token",
                key: short(token_hash),
            })?;
            if token.used_ms.is_some() {
                return Err(StoreError::Refused {
                    what: "join token",
                    reason: format!(
                        "it was used already, by {}",
                        token.used_by.as_deref().unwrap_or("an earlier enrolment")
                    ),
                });
            }
            exec(
                conn,
                "use a join token",
                "UPDATE join_tokens SET used_ms = ?2, used_by = ?3 WHERE hash_hex = ?1 AND used_ms IS NULL",
                params![token_hash, at_ms, host.name.0],
            )?;
            writer::upsert_host(conn, host)?;
            // A host enrolled again with a fresh join token (re-imaged, replaced) is back in service.
            exec(
                conn,
                "return an enrolled host to service",
                "UPDATE hosts SET retired_ms = NULL WHERE name = ?1",
                params![host.name.0],
            )?;
            exec(
                conn,
                "enrol an agent",
                "INSERT INTO agents (host, enrolled_ms, cert_serial) VALUES (?1, ?2, ?3) \
                 ON CONFLICT (host) DO UPDATE SET enrolled_ms = excluded.enrolled_ms, revoked_ms = NULL, \
                 cert_serial = excluded.cert_serial, prev_serial = NULL",
                params![host.name.0, at_ms, serial],
            )?;
            insert_events(conn, events)?;
            required(conn, &host.name.0).map(AgentReply::Agent)
        }
        AgentOp::Renew { host, serial, events } => {
            writer::validate_events(events)?;
            let agent = required(conn, host)?;
            if agent.revoked_ms.is_some() {
                return Err(StoreError::Refused {
                    what: "agent",
                    reason: format!("{host} is revoked"),
                });
            }
            exec(
                conn,
                "renew an agent's certificate",
                "UPDATE agents SET prev_serial = cert_serial, cert_serial = ?2 WHERE host = ?1",
                params![host, serial],
            )?;
            insert_events(conn, events)?;
            required(conn, host).map(AgentReply::Agent)
        }
        AgentOp::Revoke { host, at_ms, events } => {
            writer::validate_events(events)?;
            required(conn, host)?;
            exec(
                conn,
                "revoke an agent",
                "UPDATE agents SET revoked_ms = ?2, reachable = 0 WHERE host = ?1",
                params![host, at_ms],
            )?;
            insert_events(conn, events)?;
            required(conn, host).map(AgentReply::Agent)
        }
        AgentOp::Reachable {
            host,
            reachable,
            serial,
            events,
        } => {
            writer::validate_events(events)?;
            required(conn, host)?;
            exec(
                conn,
                "set an agent's reachability",
                "UPDATE agents SET reachable = ?2, \
                 prev_serial = CASE WHEN ?3 IS NOT NULL AND ?3 = cert_serial THEN NULL ELSE prev_serial END \
                 WHERE host = ?1",
                params![host, reachable, serial],
            )?;
            insert_events(conn, events)?;
            Ok(AgentReply::Done)
        }
        AgentOp::Desired { host, digest } => {
            let agent = required(conn, host)?;
            if agent.desired_digest.as_deref() == Some(digest.as_str()) {
                return Ok(AgentReply::Generation(agent.generation));
            }
            let next = agent.generation + 1;
            exec(
                conn,
                "set an agent's desired set",
                "UPDATE agents SET generation = ?2, desired_digest = ?3 WHERE host = ?1",
                params![host, i64::try_from(next).unwrap_or(i64::MAX), digest],
            )?;
            Ok(AgentReply::Generation(next))
        }
        AgentOp::Ingest { host, batch } => {
            writer::validate_events(&batch.events)?;
            let agent = required(conn, host)?;
            if agent.last_seq != batch.expect_last_seq {
                return Err(StoreError::Refused {
                    what: "observations",
                    reason: format!(
                        "{host} has last_seq {}, the batch expected {}",
                        agent.last_seq, batch.expect_last_seq
                    ),
                });
            }
            let mut seqs = Vec::with_capacity(batch.transitions.len() + batch.events.len());
            for transition in &batch.transitions {
                if instance_exists(conn, transition)? {
                    seqs.extend(writer::record_transitions(conn, std::slice::from_ref(transition))?);
                } else {
                    seqs.push(writer::insert_event(conn, &unknown_instance_event(transition), None)?);
                }
            }
            for event in &batch.events {
                seqs.push(writer::insert_event(conn, event, None)?);
            }
            exec(
                conn,
                "advance an agent's last_seq",
                "UPDATE agents SET last_seq = ?2 WHERE host = ?1",
                params![
                    host,
                    i64::try_from(batch.last_seq.max(agent.last_seq)).unwrap_or(i64::MAX)
                ],
            )?;
            Ok(AgentReply::Seqs(seqs))
        }
        AgentOp::ReplaceInstances(instances) => replace_instances(conn, instances).map(|()| AgentReply::Done),
    }
}

fn replace_instances(conn: &Connection, instances: &[InstanceRecord]) -> Result<(), StoreError> {
    exec(
        conn,
        "clear the instance marks",
        "CREATE TEMP TABLE IF NOT EXISTS keep_instances (component_key TEXT, host TEXT, slot INTEGER)",
        [],
    )?;
    exec(conn, "clear the instance marks", "DELETE FROM keep_instances", [])?;
    for instance in instances {
        exec(
            conn,
            "mark an instance",
            "INSERT INTO keep_instances (component_key, host, slot) VALUES (?1, ?2, ?3)",
            params![instance.component_key, instance.host.0, instance.slot],
        )?;
    }
    exec(
        conn,
        "delete instances no longer desired",
        "DELETE FROM instances WHERE NOT EXISTS (SELECT 1 FROM keep_instances k WHERE \
         k.component_key = instances.component_key AND k.host = instances.host AND k.slot = instances.slot)",
        [],
    )?;
    exec(conn, "clear the instance marks", "DELETE FROM keep_instances", [])?;
    writer::put_instances(conn, instances)
}

fn instance_exists(conn: &Connection, t: &crate::model::InstanceTransition) -> Result<bool, StoreError> {
    conn.prepare_cached("SELECT 1 FROM instances WHERE component_key = ?1 AND host = ?2 AND slot = ?3")
        .and_then(|mut stmt| {
            stmt.query_row(params![t.component_key, t.host.0, t.slot], |_| Ok(()))
                .optional()
        })
        .map(|found| found.is_some())
        .map_err(StoreError::sqlite("read an instance"))
}

/// A transition of an instance no longer (or not yet) desired: kept on the timeline only.
fn unknown_instance_event(t: &crate::model::InstanceTransition) -> NewEvent {
    let system = t.component_key.split('/').next().unwrap_or_default().to_owned();
    let typed = endstate_events::Event::InstanceTransitioned(endstate_events::InstanceTransitioned {
        slot: t.slot,
        version: t.actual.version.clone(),
        status: t.actual.status.as_str().to_owned(),
        state: t.actual.state.clone(),
        previous_state: None,
        previous_status: None,
        desired: Some(false),
    });
    NewEvent {
        systems: vec![system],
        host: Some(t.host.0.clone()),
        component: Some(t.component_key.clone()),
        change: t.change,
        actor: t.actor.clone(),
        ..NewEvent::of(
            t.actual.since_ms,
            &typed,
            format!(
                "{} on {} slot {} is {} ({}), not a desired instance",
                t.component_key,
                t.host,
                t.slot,
                t.actual.state,
                t.actual.status.as_str()
            ),
        )
    }
}

fn insert_events(conn: &Connection, events: &[NewEvent]) -> Result<(), StoreError> {
    for event in events {
        writer::insert_event(conn, event, None)?;
    }
    Ok(())
}

fn put_join_token(conn: &Connection, token: &JoinTokenRow) -> Result<(), StoreError> {
    if find_join_token(conn, &token.hash_hex)?.is_some() {
        return Err(StoreError::Invalid {
            what: "join token",
            reason: "another join token has the same hash".to_owned(),
        });
    }
    let labels = serde_json::to_string(&token.labels).map_err(|source| StoreError::Json {
        column: "join_tokens.labels",
        key: short(&token.hash_hex),
        source: Arc::new(source),
    })?;
    exec(
        conn,
        "insert a join token",
        "INSERT INTO join_tokens (hash_hex, labels, host, created_ms, created_by, expires_ms, used_ms, used_by) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            token.hash_hex,
            labels,
            token.host,
            token.created_ms,
            token.created_by,
            token.expires_ms,
            token.used_ms,
            token.used_by
        ],
    )
}

fn exec<P: rusqlite::Params>(conn: &Connection, op: &'static str, sql: &str, params: P) -> Result<(), StoreError> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute(params))
        .map(drop)
        .map_err(StoreError::sqlite(op))
}

fn required(conn: &Connection, host: &str) -> Result<AgentRecord, StoreError> {
    get_agent(conn, host)?.ok_or_else(|| StoreError::NotFound {
        what: "agent",
        key: host.to_owned(),
    })
}

/// The first characters of a hash, enough to name it in an error without repeating it whole.
fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

// --- reads (any connection) ---

pub(crate) fn find_join_token(conn: &Connection, hash_hex: &str) -> Result<Option<JoinTokenRow>, StoreError> {
    let row = conn
        .prepare_cached(
            "SELECT hash_hex, labels, host, created_ms, created_by, expires_ms, used_ms, used_by \
             FROM join_tokens WHERE hash_hex = ?1",
        )
        .and_then(|mut stmt| {
            stmt.query_row(params![hash_hex], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                    row.get::<_, Option<String>>(7)?,
                ))
            })
            .optional()
        })
        .map_err(StoreError::sqlite("read a join token"))?;
    let Some((hash_hex, labels, host, created_ms, created_by, expires_ms, used_ms, used_by)) = row else {
        return Ok(None);
    };
    let labels = serde_json::from_str(&labels).map_err(|source| StoreError::Json {
        column: "join_tokens.labels",
        key: short(&hash_hex),
        source: Arc::new(source),
    })?;
    Ok(Some(JoinTokenRow {
        hash_hex,
        labels,
        host,
        created_ms,
        created_by,
        expires_ms,
        used_ms,
        used_by,
    }))
}

pub(crate) fn get_agent(conn: &Connection, host: &str) -> Result<Option<AgentRecord>, StoreError> {
    conn.prepare_cached(&format!("SELECT {AGENT_COLUMNS} FROM agents WHERE host = ?1"))
        .and_then(|mut stmt| stmt.query_row(params![host], agent_row).optional())
        .map_err(StoreError::sqlite("read an agent"))
}

pub(crate) fn list_agents(conn: &Connection) -> Result<Vec<AgentRecord>, StoreError> {
    let op = "list agents";
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {AGENT_COLUMNS} FROM agents ORDER BY host"))
        .map_err(StoreError::sqlite(op))?;
    let rows = stmt.query_map([], agent_row).map_err(StoreError::sqlite(op))?;
    rows.collect::<rusqlite::Result<Vec<_>>>()
        .map_err(StoreError::sqlite(op))
}

fn agent_row(row: &Row<'_>) -> rusqlite::Result<AgentRecord> {
    Ok(AgentRecord {
        host: HostName(row.get(0)?),
        enrolled_ms: row.get(1)?,
        revoked_ms: row.get(2)?,
        cert_serial: row.get(3)?,
        prev_serial: row.get(4)?,
        reachable: row.get(5)?,
        last_seq: u64::try_from(row.get::<_, i64>(6)?).unwrap_or_default(),
        generation: u64::try_from(row.get::<_, i64>(7)?).unwrap_or_default(),
        desired_digest: row.get(8)?,
    })
}
