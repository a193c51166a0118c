//! The replication connection: socket, TLS, startup, authentication, and the
//! replication commands that run before streaming starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ChannelBinding, ScramSha256};
use postgres_protocol::message::backend::{ErrorResponseBody, Message};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::config::Host;

use super::proto::{self, BackendFrame, SlotOptions};
use super::{DbError, ReplicationError};
use crate::Lsn;
use crate::conninfo::ConnConfig;
use crate::net::Target;
use crate::net::hosts::{self, ServerRole, WalkError};
use crate::net::socket::{self, OpenError};

pub(crate) use crate::net::socket::Socket;

/// A row returned by a simple query: text values by column.
#[derive(Debug, Clone)]
pub struct Row {
    columns: Arc<Vec<String>>,
    values: Vec<Option<String>>,
}

impl Row {
    /// The value of `column`, `None` if NULL or absent.
    pub fn get(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.values.get(i)?.as_deref()
    }

    pub fn values(&self) -> &[Option<String>] {
        &self.values
    }
}

/// Reply to `IDENTIFY_SYSTEM`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentifySystem {
    pub systemid: String,
    pub timeline: u32,
    pub xlogpos: Lsn,
    pub dbname: Option<String>,
}

/// Reply to `CREATE_REPLICATION_SLOT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// Changes committed after this position are decoded by the slot; a
    /// snapshot taken after the slot exists sees everything before it (I1).
    pub consistent_point: Lsn,
    /// Set with `SnapshotAction::Export`.
    pub snapshot_name: Option<String>,
    pub output_plugin: Option<String>,
}

/// A connection in replication mode (`replication=database`), before or
/// instead of streaming.
pub struct ReplicationClient {
    pub(crate) socket: Socket,
    pub(crate) read_buf: BytesMut,
    write_buf: BytesMut,
    parameters: HashMap<String, String>,
    server_version_num: u32,
    /// The walsender's pid (BackendKeyData), 0 if the server sent none.
    pub(crate) backend_pid: i32,
    /// The host it is connected to.
    pub(crate) target: Target,
    /// Its `application_name`, as `pg_stat_activity` shows it.
    pub(crate) application_name: String,
}

impl ReplicationClient {
    /// Connects to the first reachable host of `config`, negotiating TLS as
    /// its `sslmode` says, and authenticates (trust, password, MD5 or
    /// SCRAM-SHA-256).
    pub async fn connect(config: &ConnConfig) -> Result<Self, ReplicationError> {
        Self::connect_with_params(config, &[]).await
    }

    /// [`ReplicationClient::connect`] with extra startup parameters: any
    /// setting (`DateStyle`, `TimeZone`, ...) the walsender session should
    /// use. pgoutput prints values with the walsender's settings.
    pub async fn connect_with_params(
        config: &ConnConfig,
        params: &[(&str, &str)],
    ) -> Result<Self, ReplicationError> {
        let targets = config.targets();
        match hosts::first_fitting(&targets, config.net(), |t| {
            Self::connect_one(config, t, params)
        })
        .await
        {
            Ok((client, _)) => Ok(client),
            Err(WalkError::Only(e)) => Err(e),
            Err(WalkError::None(e)) => Err(ReplicationError::NoHost(e)),
        }
    }

    async fn connect_one(
        config: &ConnConfig,
        target: Target,
        extra: &[(&str, &str)],
    ) -> Result<Self, ReplicationError> {
        let socket = socket::open(&target, config.net(), config.tls())
            .await
            .map_err(|e| open_error(&target, e))?;
        let mut client = ReplicationClient {
            socket,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
            parameters: HashMap::new(),
            server_version_num: 0,
            backend_pid: 0,
            target,
            application_name: config.application_name().to_string(),
        };
        client.startup(config, extra).await?;
        Ok(client)
    }

    async fn startup(
        &mut self,
        config: &ConnConfig,
        extra: &[(&str, &str)],
    ) -> Result<(), ReplicationError> {
        let mut params = vec![
            ("user", config.user()),
            ("database", config.dbname()),
            ("replication", "database"),
            ("application_name", config.application_name()),
            ("client_encoding", "UTF8"),
        ];
        if let Some(options) = config.pg().get_options() {
            params.push(("options", options));
        }
        params.extend_from_slice(extra);
        frontend::startup_message(params.iter().copied(), &mut self.write_buf)?;
        self.flush_write().await?;

        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read_message().await? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    let pw = need_password(config)?;
                    frontend::password_message(pw, &mut self.write_buf)?;
                    self.flush_write().await?;
                }
                Message::AuthenticationMd5Password(body) => {
                    let pw = need_password(config)?;
                    let hashed = md5_hash(config.user().as_bytes(), pw, body.salt());
                    frontend::password_message(hashed.as_bytes(), &mut self.write_buf)?;
                    self.flush_write().await?;
                }
                Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut has_scram = false;
                    while let Some(m) = mechanisms.next()? {
                        has_scram |= m == sasl::SCRAM_SHA_256;
                    }
                    if !has_scram {
                        return Err(ReplicationError::Auth(
                            "the server offers no SASL mechanism walshift supports (SCRAM-SHA-256)"
                                .into(),
                        ));
                    }
                    let pw = need_password(config)?;
                    // Channel binding (SCRAM-SHA-256-PLUS) is not offered by us:
                    // 'n' tells the server we do not support it, which every
                    // server accepts.
                    let s = ScramSha256::new(pw, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.write_buf,
                    )?;
                    self.flush_write().await?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL continue without SASL start".into())
                    })?;
                    s.update(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.write_buf)?;
                    self.flush_write().await?;
                }
                Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL final without SASL start".into())
                    })?;
                    s.finish(body.data()).map_err(|e| {
                        ReplicationError::Auth(format!("the server's SCRAM proof is invalid: {e}"))
                    })?;
                }
                Message::AuthenticationKerberosV5
                | Message::AuthenticationScmCredential
                | Message::AuthenticationGss
                | Message::AuthenticationSspi
                | Message::AuthenticationGssContinue(_) => {
                    return Err(ReplicationError::Auth(
                        "the server asks for Kerberos/GSS/SSPI authentication, which walshift does not support; use scram-sha-256 in pg_hba.conf".into(),
                    ));
                }
                Message::ParameterStatus(body) => {
                    self.parameters
                        .insert(body.name()?.to_string(), body.value()?.to_string());
                }
                Message::BackendKeyData(body) => self.backend_pid = body.process_id(),
                Message::NoticeResponse(body) => log_notice(&body_error(body.fields())?),
                Message::ReadyForQuery(_) => break,
                Message::ErrorResponse(body) => return Err(db_error(&body)?),
                other => return Err(unexpected("startup", &other)),
            }
        }
        self.server_version_num = self
            .parameters
            .get("server_version")
            .and_then(|v| proto::parse_server_version(v))
            .ok_or_else(|| {
                ReplicationError::Protocol("the server did not report server_version".into())
            })?;
        Ok(())
    }

    /// `server_version_num` of the server, e.g. 150018.
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// A parameter the server reported (`server_version`, `TimeZone`, ...).
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.parameters.get(name).map(String::as_str)
    }

    /// Runs one command through the simple query protocol and returns its
    /// rows as text. Replication connections accept replication commands,
    /// `SHOW`, and (with `replication=database`) plain SQL.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Row>, ReplicationError> {
        tracing::debug!(command = sql, "replication command");
        frontend::query(sql, &mut self.write_buf)?;
        self.flush_write().await?;
        let mut rows = Vec::new();
        let mut columns = Arc::new(Vec::new());
        let mut error = None;
        loop {
            match self.read_message().await? {
                Message::RowDescription(body) => {
                    columns = Arc::new(
                        body.fields()
                            .map(|f| Ok(f.name().to_string()))
                            .collect::<Vec<_>>()?,
                    );
                }
                Message::DataRow(body) => {
                    let buf = body.buffer();
                    let values = body
                        .ranges()
                        .map(|r| Ok(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned())))
                        .collect::<Vec<_>>()?;
                    rows.push(Row {
                        columns: columns.clone(),
                        values,
                    });
                }
                Message::CommandComplete(_) | Message::EmptyQueryResponse => {}
                Message::NoticeResponse(body) => log_notice(&body_error(body.fields())?),
                Message::ParameterStatus(body) => {
                    self.parameters
                        .insert(body.name()?.to_string(), body.value()?.to_string());
                }
                Message::ErrorResponse(body) => error = Some(db_error(&body)?),
                Message::ReadyForQuery(_) => break,
                other => return Err(unexpected(sql, &other)),
            }
        }
        match error {
            Some(e) => Err(e),
            None => Ok(rows),
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<IdentifySystem, ReplicationError> {
        let rows = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row = one_row("IDENTIFY_SYSTEM", &rows)?;
        Ok(IdentifySystem {
            systemid: field(row, "systemid")?.to_string(),
            timeline: parse_field(row, "timeline")?,
            xlogpos: parse_field(row, "xlogpos")?,
            dbname: row.get("dbname").map(str::to_string),
        })
    }

    /// `CREATE_REPLICATION_SLOT name LOGICAL pgoutput ...`.
    pub async fn create_logical_slot(
        &mut self,
        name: &str,
        opts: SlotOptions,
    ) -> Result<CreatedSlot, ReplicationError> {
        let cmd = proto::create_logical_slot_command(name, opts, self.server_version_num);
        let rows = self.simple_query(&cmd).await?;
        let row = one_row("CREATE_REPLICATION_SLOT", &rows)?;
        Ok(CreatedSlot {
            slot_name: field(row, "slot_name")?.to_string(),
            consistent_point: parse_field(row, "consistent_point")?,
            snapshot_name: row.get("snapshot_name").map(str::to_string),
            output_plugin: row.get("output_plugin").map(str::to_string),
        })
    }

    /// `DROP_REPLICATION_SLOT name [WAIT]`; with `wait`, waits for an active
    /// slot to be released instead of failing.
    pub async fn drop_slot(&mut self, name: &str, wait: bool) -> Result<(), ReplicationError> {
        self.simple_query(&proto::drop_slot_command(name, wait))
            .await
            .map(drop)
    }

    /// How long the server waits for a status update before it drops us
    /// (`wal_sender_timeout`); `None` when the timeout is disabled.
    pub async fn wal_sender_timeout(&mut self) -> Result<Option<Duration>, ReplicationError> {
        let rows = self.simple_query("SHOW wal_sender_timeout").await?;
        let row = one_row("SHOW wal_sender_timeout", &rows)?;
        Ok(row
            .values()
            .first()
            .cloned()
            .flatten()
            .and_then(|v| proto::parse_show_duration(&v)))
    }

    /// Sends `START_REPLICATION` and waits for the server to enter CopyBoth.
    pub(crate) async fn enter_copy_both(&mut self, command: &str) -> Result<(), ReplicationError> {
        tracing::debug!(command, "replication command");
        frontend::query(command, &mut self.write_buf)?;
        self.flush_write().await?;
        loop {
            match self.read_frame().await? {
                BackendFrame::CopyBothResponse => return Ok(()),
                BackendFrame::Message(Message::NoticeResponse(body)) => {
                    log_notice(&body_error(body.fields())?)
                }
                BackendFrame::Message(Message::ParameterStatus(_)) => {}
                BackendFrame::Message(Message::ErrorResponse(body)) => {
                    let err = db_error(&body)?;
                    // The server follows an error with ReadyForQuery; consume
                    // it so the connection stays usable.
                    while !matches!(
                        self.read_frame().await?,
                        BackendFrame::Message(Message::ReadyForQuery(_))
                    ) {}
                    return Err(err);
                }
                BackendFrame::Message(other) => return Err(unexpected(command, &other)),
                BackendFrame::CopyData(_) => {
                    return Err(ReplicationError::Protocol(
                        "CopyData before CopyBothResponse".into(),
                    ));
                }
            }
        }
    }

    /// Ends the session politely (`Terminate`).
    pub async fn close(mut self) -> Result<(), ReplicationError> {
        frontend::terminate(&mut self.write_buf);
        self.flush_write().await?;
        let _ = self.socket.shutdown().await;
        Ok(())
    }

    async fn flush_write(&mut self) -> Result<(), ReplicationError> {
        self.socket.write_all(&self.write_buf).await?;
        self.socket.flush().await?;
        self.write_buf.clear();
        Ok(())
    }

    async fn read_frame(&mut self) -> Result<BackendFrame, ReplicationError> {
        loop {
            if let Some(frame) = proto::read_frame(&mut self.read_buf)? {
                return Ok(frame);
            }
            if self.socket.read_buf(&mut self.read_buf).await? == 0 {
                return Err(ReplicationError::Closed);
            }
        }
    }

    async fn read_message(&mut self) -> Result<Message, ReplicationError> {
        match self.read_frame().await? {
            BackendFrame::Message(m) => Ok(m),
            BackendFrame::CopyBothResponse => Err(ReplicationError::Protocol(
                "unexpected CopyBothResponse".into(),
            )),
            BackendFrame::CopyData(_) => {
                Err(ReplicationError::Protocol("unexpected CopyData".into()))
            }
        }
    }
}

/// The replication error for a socket that could not be opened.
fn open_error(target: &Target, e: OpenError) -> ReplicationError {
    let host = match &target.host {
        Host::Tcp(h) => h.clone(),
        Host::Unix(_) => target.to_string(),
    };
    match e {
        OpenError::Io(source) => ReplicationError::Connect {
            target: target.to_string(),
            source,
        },
        OpenError::Tls(e) => ReplicationError::Tls(e),
        OpenError::TlsHandshake(source) => ReplicationError::TlsHandshake { host, source },
        OpenError::TlsUnavailable(mode) => ReplicationError::TlsUnavailable { host, mode },
        OpenError::Protocol(m) => ReplicationError::Protocol(m),
    }
}

impl ServerRole for ReplicationClient {
    async fn read_only(&mut self) -> Result<bool, String> {
        let v = self.first_value("SHOW transaction_read_only").await?;
        Ok(v == "on")
    }
    async fn in_recovery(&mut self) -> Result<bool, String> {
        let v = self.first_value("SELECT pg_is_in_recovery()").await?;
        Ok(v == "t")
    }
}

impl ReplicationClient {
    async fn first_value(&mut self, sql: &str) -> Result<String, String> {
        let rows = self.simple_query(sql).await.map_err(|e| e.to_string())?;
        rows.first()
            .and_then(|r| r.values().first().cloned().flatten())
            .ok_or_else(|| format!("{sql} returned no row"))
    }
}

fn need_password(config: &ConnConfig) -> Result<&[u8], ReplicationError> {
    config.password().ok_or_else(|| {
        ReplicationError::Auth(format!(
            "the server asks for a password for user {:?} but none was given: set PGPASSWORD or password= in the connection string",
            config.user()
        ))
    })
}

fn one_row<'a>(what: &str, rows: &'a [Row]) -> Result<&'a Row, ReplicationError> {
    rows.first()
        .ok_or_else(|| ReplicationError::Protocol(format!("{what} returned no row")))
}

fn field<'a>(row: &'a Row, name: &str) -> Result<&'a str, ReplicationError> {
    row.get(name)
        .ok_or_else(|| ReplicationError::Protocol(format!("reply has no {name}")))
}

fn parse_field<T: std::str::FromStr>(row: &Row, name: &str) -> Result<T, ReplicationError> {
    let v = field(row, name)?;
    v.parse()
        .map_err(|_| ReplicationError::Protocol(format!("cannot read {name} {v:?}")))
}

fn unexpected(during: &str, m: &Message) -> ReplicationError {
    let kind = match m {
        Message::CopyInResponse(_) => "CopyInResponse",
        Message::CopyOutResponse(_) => "CopyOutResponse",
        Message::CopyData(_) => "CopyData",
        Message::CopyDone => "CopyDone",
        Message::NotificationResponse(_) => "NotificationResponse",
        _ => "message",
    };
    ReplicationError::Protocol(format!("unexpected {kind} during {during}"))
}

pub(crate) fn db_error(body: &ErrorResponseBody) -> Result<ReplicationError, ReplicationError> {
    Ok(ReplicationError::Db(Box::new(body_error(body.fields())?)))
}

pub(crate) fn body_error(
    mut fields: postgres_protocol::message::backend::ErrorFields<'_>,
) -> Result<DbError, ReplicationError> {
    let mut e = DbError::default();
    while let Some(f) = fields.next()? {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    Ok(e)
}

pub(crate) fn log_notice(e: &DbError) {
    tracing::info!(severity = %e.severity, code = %e.code, "server notice: {}", e.message);
}
