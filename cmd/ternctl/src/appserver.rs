//! The Application Server's settings: payload formatters (`ternctl applications formatters`,
//! `ternctl end-devices test-formatter`) and webhooks (`ternctl applications webhooks`).

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use tern_api::v3::{
    ApplicationFormatters, ApplicationIdentifiers, ApplicationWebhook,
    ApplicationWebhookIdentifiers, ApplicationWebhookMessage, EndDeviceIdentifiers,
    PayloadFormatter, SetApplicationWebhookRequest, TestDecodeUplinkRequest,
};

use crate::client::RpcResult;
use crate::output;
use crate::{Ctx, UsageError};

/// A payload formatter, as typed on the command line.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Formatter {
    /// No formatter: payloads stay bytes.
    None,
    /// CayenneLPP.
    Cayennelpp,
    /// JavaScript (`decodeUplink`, `encodeDownlink`, `decodeDownlink`).
    Javascript,
    /// A WebAssembly module (WAT text or base64 binary).
    Wasm,
    /// The application's formatter (devices only).
    Application,
}

impl Formatter {
    fn api(self) -> PayloadFormatter {
        match self {
            Self::None => PayloadFormatter::FormatterNone,
            Self::Cayennelpp => PayloadFormatter::FormatterCayennelpp,
            Self::Javascript => PayloadFormatter::FormatterJavascript,
            Self::Wasm => PayloadFormatter::FormatterWasm,
            Self::Application => PayloadFormatter::FormatterApplication,
        }
    }

    /// Whether the formatter needs a script or module.
    fn takes_parameter(self) -> bool {
        matches!(self, Self::Javascript | Self::Wasm)
    }
}

/// One direction's formatter and where its script or module comes from.
fn formatter_parameter(flag: &str, formatter: Formatter, file: Option<&PathBuf>) -> Result<String> {
    match (formatter.takes_parameter(), file) {
        (true, Some(path)) => std::fs::read_to_string(path)
            .with_context(|| format!("--{flag}-file {}", path.display())),
        (true, None) => Err(UsageError(format!(
            "--{flag}-file: a {formatter:?} formatter needs its script or module"
        ))
        .into()),
        (false, Some(_)) => Err(UsageError(format!(
            "--{flag}-file: a {formatter:?} formatter takes no script"
        ))
        .into()),
        (false, None) => Ok(String::new()),
    }
}

/// `ternctl applications formatters` subcommands.
#[derive(Subcommand, Debug)]
pub enum FormattersCommand {
    /// Show the application's default formatters.
    Get {
        /// The application ID.
        application_id: String,
    },
    /// Set the application's default formatters (devices may override them).
    Set {
        /// The application ID.
        application_id: String,
        /// The uplink formatter.
        #[arg(long, value_enum)]
        up_formatter: Option<Formatter>,
        /// The uplink script (JavaScript) or module (WebAssembly), from this file.
        #[arg(long, value_name = "FILE")]
        up_formatter_parameter_file: Option<PathBuf>,
        /// The downlink formatter.
        #[arg(long, value_enum)]
        down_formatter: Option<Formatter>,
        /// The downlink script or module, from this file.
        #[arg(long, value_name = "FILE")]
        down_formatter_parameter_file: Option<PathBuf>,
    },
}

/// Runs `ternctl applications formatters`.
pub async fn formatters(ctx: &Ctx, cmd: FormattersCommand) -> Result<()> {
    let mut client = ctx.api.formatters();
    match cmd {
        FormattersCommand::Get { application_id } => {
            let current = client
                .get_application_formatters(ApplicationIdentifiers {
                    application_id: application_id.clone(),
                })
                .await
                .ctx(|| format!("get the formatters of application {application_id}"))?;
            output::print_one(ctx.out, &current);
        }
        FormattersCommand::Set {
            application_id,
            up_formatter,
            up_formatter_parameter_file,
            down_formatter,
            down_formatter_parameter_file,
        } => {
            if up_formatter.is_none() && down_formatter.is_none() {
                return Err(
                    UsageError("give --up-formatter, --down-formatter or both".into()).into(),
                );
            }
            // Unset directions keep what the application has.
            let ids = ApplicationIdentifiers {
                application_id: application_id.clone(),
            };
            let mut formatters = client
                .get_application_formatters(ids.clone())
                .await
                .ctx(|| format!("get the formatters of application {application_id}"))?
                .formatters
                .unwrap_or_default();
            set_direction(
                "up-formatter-parameter",
                up_formatter,
                up_formatter_parameter_file.as_ref(),
                &mut formatters.up_formatter,
                &mut formatters.up_formatter_parameter,
            )?;
            set_direction(
                "down-formatter-parameter",
                down_formatter,
                down_formatter_parameter_file.as_ref(),
                &mut formatters.down_formatter,
                &mut formatters.down_formatter_parameter,
            )?;
            let updated = client
                .set_application_formatters(ApplicationFormatters {
                    application_ids: Some(ids),
                    formatters: Some(formatters),
                })
                .await
                .ctx(|| format!("set the formatters of application {application_id}"))?;
            output::print_one(ctx.out, &updated);
        }
    }
    Ok(())
}

fn set_direction(
    flag: &str,
    formatter: Option<Formatter>,
    file: Option<&PathBuf>,
    kind: &mut i32,
    parameter: &mut String,
) -> Result<()> {
    match formatter {
        Some(Formatter::Application) => Err(UsageError(format!(
            "--{}: `application` is for devices, not applications",
            flag.trim_end_matches("-parameter")
        ))
        .into()),
        Some(f) => {
            *parameter = formatter_parameter(flag, f, file)?;
            *kind = f.api() as i32;
            Ok(())
        }
        None if file.is_some() => Err(UsageError(format!(
            "--{flag}-file needs --{}",
            flag.trim_end_matches("-parameter")
        ))
        .into()),
        None => Ok(()),
    }
}

/// `ternctl end-devices test-formatter`: decodes a payload as an uplink of the device would be.
#[derive(Args, Debug)]
pub struct TestFormatterArgs {
    /// The application ID.
    pub application_id: String,
    /// The device ID.
    pub device_id: String,
    /// The FPort of the uplink (1..223).
    #[arg(long, default_value_t = 1)]
    pub f_port: u32,
    /// The clear payload, hex.
    #[arg(long, value_name = "HEX")]
    pub bytes: String,
    /// Try this formatter instead of the device's (or its application's).
    #[arg(long, value_enum)]
    pub formatter: Option<Formatter>,
    /// Its script or module, from this file.
    #[arg(long, value_name = "FILE")]
    pub formatter_parameter_file: Option<PathBuf>,
}

/// Runs `ternctl end-devices test-formatter`.
pub async fn test_formatter(ctx: &Ctx, args: TestFormatterArgs) -> Result<()> {
    let bytes =
        hex::decode(args.bytes.trim()).map_err(|e| UsageError(format!("--bytes: not hex: {e}")))?;
    if !(1..=223).contains(&args.f_port) {
        return Err(UsageError(format!("--f-port: {} is not in 1..223", args.f_port)).into());
    }
    let (formatter, formatter_parameter) = match args.formatter {
        Some(f) => (
            Some(f.api() as i32),
            formatter_parameter(
                "formatter-parameter",
                f,
                args.formatter_parameter_file.as_ref(),
            )?,
        ),
        None if args.formatter_parameter_file.is_some() => {
            return Err(UsageError("--formatter-parameter-file needs --formatter".into()).into());
        }
        None => (None, String::new()),
    };
    let answer = ctx
        .api
        .formatters()
        .test_decode_uplink(TestDecodeUplinkRequest {
            end_device_ids: Some(EndDeviceIdentifiers::new(
                &args.application_id,
                &args.device_id,
            )),
            f_port: args.f_port,
            frm_payload: bytes,
            formatter,
            formatter_parameter,
        })
        .await
        .ctx(|| {
            format!(
                "test the formatter of device {}/{}",
                args.application_id, args.device_id
            )
        })?;
    output::print_one(ctx.out, &answer);
    if !answer.error.is_empty() {
        anyhow::bail!("the formatter failed: {}", answer.error);
    }
    Ok(())
}

/// `ternctl applications webhooks` subcommands.
#[derive(Subcommand, Debug)]
pub enum WebhooksCommand {
    /// Create or replace a webhook.
    Set(Box<WebhookArgs>),
    /// Show a webhook and its delivery health.
    Get {
        /// The application ID.
        application_id: String,
        /// The webhook ID.
        webhook_id: String,
    },
    /// List the application's webhooks.
    List {
        /// The application ID.
        application_id: String,
    },
    /// Delete a webhook (its pending deliveries are dropped).
    Delete {
        /// The application ID.
        application_id: String,
        /// The webhook ID.
        webhook_id: String,
    },
}

/// A webhook's settings; a message type is sent only when its path is given.
#[derive(Args, Debug)]
pub struct WebhookArgs {
    /// The application ID.
    pub application_id: String,
    /// The webhook ID.
    pub webhook_id: String,
    /// The base URL; message paths are appended to it.
    #[arg(long)]
    pub base_url: String,
    /// A header added to every request; repeatable.
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = crate::entities::parse_attribute)]
    pub headers: Vec<(String, String)>,
    /// Sent as X-Downlink-Apikey, so the receiver can push downlinks back.
    #[arg(long)]
    pub downlink_api_key: Option<String>,
    /// Queue nothing and send nothing until set again without it.
    #[arg(long)]
    pub paused: bool,
    /// Path of data uplinks, e.g. /uplink.
    #[arg(long, value_name = "PATH")]
    pub uplink_message_path: Option<String>,
    /// Path of join-accepts.
    #[arg(long, value_name = "PATH")]
    pub join_accept_path: Option<String>,
    /// Path of acknowledged downlinks.
    #[arg(long, value_name = "PATH")]
    pub downlink_ack_path: Option<String>,
    /// Path of unacknowledged downlinks.
    #[arg(long, value_name = "PATH")]
    pub downlink_nack_path: Option<String>,
    /// Path of transmitted downlinks.
    #[arg(long, value_name = "PATH")]
    pub downlink_sent_path: Option<String>,
    /// Path of failed downlinks.
    #[arg(long, value_name = "PATH")]
    pub downlink_failed_path: Option<String>,
    /// Path of queued downlinks.
    #[arg(long, value_name = "PATH")]
    pub downlink_queued_path: Option<String>,
    /// Path of invalidated downlink queues.
    #[arg(long, value_name = "PATH")]
    pub downlink_queue_invalidated_path: Option<String>,
}

fn webhook_ids(application_id: &str, webhook_id: &str) -> ApplicationWebhookIdentifiers {
    ApplicationWebhookIdentifiers {
        application_ids: Some(ApplicationIdentifiers {
            application_id: application_id.to_owned(),
        }),
        webhook_id: webhook_id.to_owned(),
    }
}

/// The webhook the arguments describe.
pub fn webhook(args: &WebhookArgs) -> ApplicationWebhook {
    let message = |path: &Option<String>| {
        path.as_ref()
            .map(|p| ApplicationWebhookMessage { path: p.clone() })
    };
    ApplicationWebhook {
        ids: Some(webhook_ids(&args.application_id, &args.webhook_id)),
        base_url: args.base_url.clone(),
        headers: args.headers.iter().cloned().collect(),
        format: "json".to_owned(),
        downlink_api_key: args.downlink_api_key.clone().unwrap_or_default(),
        paused: args.paused,
        uplink_message: message(&args.uplink_message_path),
        join_accept: message(&args.join_accept_path),
        downlink_ack: message(&args.downlink_ack_path),
        downlink_nack: message(&args.downlink_nack_path),
        downlink_sent: message(&args.downlink_sent_path),
        downlink_failed: message(&args.downlink_failed_path),
        downlink_queued: message(&args.downlink_queued_path),
        downlink_queue_invalidated: message(&args.downlink_queue_invalidated_path),
        ..Default::default()
    }
}

/// Runs `ternctl applications webhooks`.
pub async fn webhooks(ctx: &Ctx, cmd: WebhooksCommand) -> Result<()> {
    let mut client = ctx.api.webhooks();
    match cmd {
        WebhooksCommand::Set(args) => {
            let set = client
                .set(SetApplicationWebhookRequest {
                    webhook: Some(webhook(&args)),
                })
                .await
                .ctx(|| {
                    format!(
                        "set webhook {} of application {}",
                        args.webhook_id, args.application_id
                    )
                })?;
            output::print_one(ctx.out, &set);
        }
        WebhooksCommand::Get {
            application_id,
            webhook_id,
        } => {
            let hook = client
                .get(webhook_ids(&application_id, &webhook_id))
                .await
                .ctx(|| format!("get webhook {webhook_id} of application {application_id}"))?;
            output::print_one(ctx.out, &hook);
        }
        WebhooksCommand::List { application_id } => {
            let list = client
                .list(ApplicationIdentifiers {
                    application_id: application_id.clone(),
                })
                .await
                .ctx(|| format!("list the webhooks of application {application_id}"))?;
            output::print_list(
                ctx.out,
                &list.webhooks,
                &[
                    ("WEBHOOK", "ids.webhook_id"),
                    ("BASE URL", "base_url"),
                    ("PAUSED", "paused"),
                    ("PENDING", "pending_deliveries"),
                ],
            );
        }
        WebhooksCommand::Delete {
            application_id,
            webhook_id,
        } => {
            client
                .delete(webhook_ids(&application_id, &webhook_id))
                .await
                .ctx(|| format!("delete webhook {webhook_id} of application {application_id}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_required_exactly_for_scripts_and_modules() {
        let file = PathBuf::from("/nonexistent/script.js");
        assert!(formatter_parameter("up", Formatter::Javascript, None).is_err());
        let e = formatter_parameter("up", Formatter::Cayennelpp, Some(&file)).unwrap_err();
        assert!(e.to_string().contains("takes no script"), "{e}");
        assert_eq!(
            formatter_parameter("up", Formatter::Cayennelpp, None).unwrap(),
            ""
        );
        let e = formatter_parameter("up", Formatter::Wasm, Some(&file)).unwrap_err();
        assert!(format!("{e:#}").contains("/nonexistent/script.js"), "{e:#}");
    }

    #[test]
    fn webhook_sends_only_the_messages_with_a_path() {
        let args = WebhookArgs {
            application_id: "app1".into(),
            webhook_id: "wh1".into(),
            base_url: "https://example.com/hooks".into(),
            headers: vec![("Authorization".into(), "Bearer x".into())],
            downlink_api_key: None,
            paused: false,
            uplink_message_path: Some("/up".into()),
            join_accept_path: None,
            downlink_ack_path: None,
            downlink_nack_path: None,
            downlink_sent_path: Some("/sent".into()),
            downlink_failed_path: None,
            downlink_queued_path: None,
            downlink_queue_invalidated_path: None,
        };
        let hook = webhook(&args);
        assert_eq!(hook.uplink_message.unwrap().path, "/up");
        assert_eq!(hook.downlink_sent.unwrap().path, "/sent");
        assert!(hook.join_accept.is_none());
        assert_eq!(hook.headers["Authorization"], "Bearer x");
        assert_eq!(hook.format, "json");
    }
}
