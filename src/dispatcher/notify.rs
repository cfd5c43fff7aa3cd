//! Failure emails: when a posting is dead-lettered, its registry's
//! `notify_emails` (at most 5) get one email over SMTP saying which order,
//! why, and how to redeliver, like the order-confirmation reference's error
//! notifications, so someone can fix the cause and resend.
//!
//! Off the delivery path: the dispatcher hands a [`Notice`] to a bounded
//! queue and goes on; one task sends. Rate-limited per registry to
//! `smtp.max_emails_per_hour`, so a receiver that rejects everything cannot
//! flood an inbox; what the limit suppresses is counted and mentioned in the
//! next email that goes out. The alert event on `ledger.alerts.<R>` is the
//! record; the email is a courtesy and never blocks or fails a delivery.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::SmtpConfig;
use crate::records::AlertRecord;

/// Notices waiting to be sent. A burst of dead letters beyond this is
/// logged and dropped (the alerts on LEDGER still record every one).
pub const NOTICE_QUEUE_MAX: usize = 1_024;
/// One SMTP conversation may take this long.
pub const SMTP_TIMEOUT: Duration = Duration::from_secs(20);
/// The rate limit's window.
pub const EMAIL_WINDOW: Duration = Duration::from_secs(3600);

/// A dead letter to tell people about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The dead letter, as recorded on `ledger.alerts.<R>`.
    pub alert: AlertRecord,
    /// The registry's display name, for the subject line.
    pub registry_name: String,
    /// The registry's `notify_emails`.
    pub to: Vec<String>,
    /// Later postings of the order it holds back.
    pub held: u64,
}

/// Why the notifier could not start.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("smtp.from: {0}")]
    From(#[source] lettre::address::AddressError),
    #[error("cannot set up SMTP to {host}: {source}")]
    Transport {
        host: String,
        #[source]
        source: lettre::transport::smtp::Error,
    },
}

/// At most `per_hour` emails per registry in any hour.
#[derive(Debug)]
pub struct EmailBudget {
    per_hour: usize,
    sent: HashMap<String, VecDeque<Instant>>,
    suppressed: HashMap<String, u64>,
}

impl EmailBudget {
    pub fn new(per_hour: u32) -> Self {
        Self {
            per_hour: per_hour as usize,
            sent: HashMap::new(),
            suppressed: HashMap::new(),
        }
    }

    /// May `registry` send an email at `now`? When yes, returns how many
    /// were suppressed since its last one (and resets that count).
    pub fn take(&mut self, registry: &str, now: Instant) -> Option<u64> {
        let sent = self.sent.entry(registry.to_owned()).or_default();
        while sent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= EMAIL_WINDOW)
        {
            sent.pop_front();
        }
        if sent.len() >= self.per_hour {
            *self.suppressed.entry(registry.to_owned()).or_default() += 1;
            return None;
        }
        sent.push_back(now);
        Some(self.suppressed.remove(registry).unwrap_or(0))
    }
}

/// Hands notices to the sending task.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: mpsc::Sender<Notice>,
}

impl Notifier {
    /// Starts the sending task; it ends when `shutdown` fires (after the
    /// email in progress) or every `Notifier` is dropped.
    pub fn start(
        smtp: &SmtpConfig,
        shutdown: CancellationToken,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), NotifyError> {
        let from: Mailbox = smtp
            .from
            .parse::<lettre::Address>()
            .map(|a| Mailbox::new(Some("ledgerline".into()), a))
            .map_err(NotifyError::From)?;
        let transport_err = |source| NotifyError::Transport {
            host: smtp.host.clone(),
            source,
        };
        let mut builder = match smtp.tls.as_str() {
            "tls" => {
                AsyncSmtpTransport::<Tokio1Executor>::relay(&smtp.host).map_err(transport_err)?
            }
            "starttls" => AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&smtp.host)
                .map_err(transport_err)?,
            _ => AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(smtp.host.as_str()),
        }
        .port(smtp.port)
        .timeout(Some(SMTP_TIMEOUT));
        if let (Some(user), Some(password)) = (&smtp.username, &smtp.password) {
            builder =
                builder.credentials(Credentials::new(user.clone(), password.expose().to_owned()));
        }
        let transport = builder.build();
        let (tx, rx) = mpsc::channel(NOTICE_QUEUE_MAX);
        let budget = EmailBudget::new(smtp.max_emails_per_hour);
        let task = tokio::spawn(send_loop(transport, from, rx, budget, shutdown));
        Ok((Self { tx }, task))
    }

    /// Queues a notice; false (and a warning) when the queue is full.
    pub fn notify(&self, notice: Notice) -> bool {
        if notice.to.is_empty() {
            return true;
        }
        match self.tx.try_send(notice) {
            Ok(()) => true,
            Err(e) => {
                warn!(error = %e, "failure email queue full or closed; the alert on LEDGER remains");
                false
            }
        }
    }
}

async fn send_loop(
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    mut rx: mpsc::Receiver<Notice>,
    mut budget: EmailBudget,
    shutdown: CancellationToken,
) {
    loop {
        let notice = tokio::select! {
            _ = shutdown.cancelled() => return,
            n = rx.recv() => match n { Some(n) => n, None => return },
        };
        let a = &notice.alert;
        let Some(suppressed) = budget.take(&a.registry_id, Instant::now()) else {
            info!(
                registry_id = %a.registry_id,
                order_id = %a.order_id,
                "failure email suppressed by smtp.max_emails_per_hour"
            );
            continue;
        };
        let message = match compose(&from, &notice, suppressed) {
            Ok(m) => m,
            Err(e) => {
                warn!(registry_id = %a.registry_id, error = %e, "cannot compose the failure email");
                continue;
            }
        };
        match transport.send(message).await {
            Ok(_) => info!(
                registry_id = %a.registry_id,
                order_id = %a.order_id,
                to = notice.to.len(),
                "failure email sent"
            ),
            Err(e) => warn!(
                registry_id = %a.registry_id,
                order_id = %a.order_id,
                error = %e,
                "failure email not sent"
            ),
        }
    }
}

/// The email for a notice.
pub fn compose(
    from: &Mailbox,
    n: &Notice,
    suppressed: u64,
) -> Result<Message, lettre::error::Error> {
    let a = &n.alert;
    let registry = if n.registry_name.is_empty() {
        a.registry_id.clone()
    } else {
        format!("{} ({})", n.registry_name, a.registry_id)
    };
    let mut body = format!(
        "Posting {seq} of order {order} could not be delivered to {registry} and was \
         dead-lettered.\n\n\
         Reason: {reason}\n",
        seq = a.seq,
        order = a.order_id,
        reason = a.reason,
    );
    if let Some(s) = a.http_status {
        body.push_str(&format!("HTTP status: {s}\n"));
    }
    if let Some(m) = &a.receiver_message {
        body.push_str(&format!("The receiver said: {m}\n"));
    }
    body.push_str(&format!(
        "Idempotency key: {key}\nAt: {at}\n",
        key = a.idempotency_key,
        at =
            a.at.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
    ));
    if n.held > 0 {
        body.push_str(&format!(
            "\n{} later posting(s) of this order are held until it is delivered.\n",
            n.held
        ));
    }
    body.push_str(&format!(
        "\nOnce the cause is fixed, resend it (same idempotency key, same body) with:\n\n    \
         ledgerline redeliver --registry {} --order {}\n",
        a.registry_id, a.order_id
    ));
    if suppressed > 0 {
        body.push_str(&format!(
            "\n{suppressed} other failure email(s) for this registry were not sent in the last \
             hour (smtp.max_emails_per_hour); `ledgerline deliveries list --registry {} --status dead` \
             lists them all.\n",
            a.registry_id
        ));
    }
    let mut builder = Message::builder()
        .from(from.clone())
        .subject(format!(
            "[ledgerline] {registry}: order {} not delivered",
            a.order_id
        ))
        .header(ContentType::TEXT_PLAIN);
    for to in &n.to {
        // Addresses are validated with the registry; a bad one is skipped.
        if let Ok(a) = to.parse::<lettre::Address>() {
            builder = builder.to(Mailbox::new(None, a));
        }
    }
    builder.body(body)
}

#[cfg(test)]
mod tests {
    use time::OffsetDateTime;

    use super::*;

    #[test]
    fn the_budget_allows_n_per_hour_per_registry_and_counts_the_rest() {
        let mut b = EmailBudget::new(2);
        let t0 = Instant::now();
        assert_eq!(b.take("a", t0), Some(0));
        assert_eq!(b.take("a", t0), Some(0));
        assert_eq!(b.take("a", t0), None);
        assert_eq!(b.take("a", t0), None);
        assert_eq!(b.take("b", t0), Some(0), "registries have their own budget");
        let later = t0 + EMAIL_WINDOW;
        assert_eq!(
            b.take("a", later),
            Some(2),
            "the next email mentions the 2 suppressed"
        );
        assert_eq!(b.take("a", later), Some(0));
        assert_eq!(b.take("a", later), None);
    }

    #[test]
    fn the_email_names_the_order_the_reason_and_the_command() {
        let from: Mailbox = "ledgerline@example.com".parse().unwrap();
        let n = Notice {
            alert: AlertRecord {
                registry_id: "xero-eu".into(),
                order_id: "o-1".into(),
                seq: 2,
                idempotency_key: uuid::Uuid::nil(),
                reason: "HTTP 422".into(),
                http_status: Some(422),
                receiver_message: Some("Unknown account".into()),
                at: OffsetDateTime::UNIX_EPOCH,
            },
            registry_name: "Xero EU".into(),
            to: vec!["ops@example.com".into()],
            held: 1,
        };
        let m = String::from_utf8(compose(&from, &n, 3).unwrap().formatted()).unwrap();
        for want in [
            "Xero EU (xero-eu): order o-1 not delivered",
            "Unknown account",
            "ledgerline redeliver --registry xero-eu --order o-1",
            "3 other failure email(s)",
            "1 later posting(s)",
        ] {
            assert!(m.contains(want), "{want} missing from\n{m}");
        }
    }
}
