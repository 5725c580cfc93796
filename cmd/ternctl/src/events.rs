//! `ternctl events subscribe`: the live event stream, one line per event.

use anyhow::Result;
use clap::{Args, Subcommand};
use futures_util::StreamExt;
use serde_json::Value;
use tern_api::v3::{
    ApplicationIdentifiers, EndDeviceIdentifiers, EntityIdentifiers, Event, GatewayIdentifiers,
    StreamEventsRequest, entity_identifiers::Ids,
};

use crate::client::RpcResult;
use crate::output::{self, OutputFormat};
use crate::{Ctx, UsageError};

/// `ternctl events` subcommands.
#[derive(Subcommand, Debug)]
pub enum EventsCommand {
    /// Stream events live until interrupted (Ctrl-C).
    Subscribe(SubscribeArgs),
}

/// What to subscribe to; at least one entity.
#[derive(Args, Debug)]
pub struct SubscribeArgs {
    /// An application (its devices' events included); repeatable.
    #[arg(long = "application", value_name = "APP_ID")]
    pub applications: Vec<String>,
    /// A device: DEV_ID of the one --application, or APP_ID/DEV_ID; repeatable.
    #[arg(long = "device", value_name = "DEV_ID")]
    pub devices: Vec<String>,
    /// A gateway; repeatable.
    #[arg(long = "gateway", value_name = "GTW_ID")]
    pub gateways: Vec<String>,
    /// Only events whose name matches one of these patterns, e.g. ns.up.*; repeatable.
    #[arg(long = "name", value_name = "PATTERN")]
    pub names: Vec<String>,
    /// Start with up to this many stored events.
    #[arg(long, default_value_t = 0)]
    pub tail: u32,
}

/// The identifiers to filter on. With devices given as bare IDs, the single application is
/// their parent and not a filter of its own (it would match every device of it).
pub fn filter(args: &SubscribeArgs) -> Result<Vec<EntityIdentifiers>, String> {
    let wrap = |ids| EntityIdentifiers { ids: Some(ids) };
    let app = |id: &str| ApplicationIdentifiers {
        application_id: id.to_owned(),
    };
    let mut out = Vec::new();
    let mut parent_used = false;
    for d in &args.devices {
        let (app_id, dev_id) = match d.split_once('/') {
            Some((a, d)) => (a.to_owned(), d.to_owned()),
            None => match args.applications.as_slice() {
                [one] => {
                    parent_used = true;
                    (one.clone(), d.clone())
                }
                _ => {
                    return Err(format!(
                        "--device {d}: give exactly one --application, or write APP_ID/{d}"
                    ));
                }
            },
        };
        out.push(wrap(Ids::DeviceIds(EndDeviceIdentifiers {
            application_ids: Some(app(&app_id)),
            device_id: dev_id,
            ..Default::default()
        })));
    }
    if !parent_used {
        out.extend(
            args.applications
                .iter()
                .map(|a| wrap(Ids::ApplicationIds(app(a)))),
        );
    }
    out.extend(args.gateways.iter().map(|g| {
        wrap(Ids::GatewayIds(GatewayIdentifiers {
            gateway_id: g.clone(),
            eui: Vec::new(),
        }))
    }));
    if out.is_empty() {
        return Err("give at least one --application, --device or --gateway".to_owned());
    }
    Ok(out)
}

/// One event as a line of text: time, name, entities, data.
pub fn line(event: &Event) -> String {
    let json = output::to_json(event);
    let time = json["time"].as_str().unwrap_or("-").to_owned();
    let ids: Vec<String> = json["identifiers"]
        .as_array()
        .map(|items| items.iter().map(describe_ids).collect())
        .unwrap_or_default();
    let mut text = format!("{time} {} {}", event.name, ids.join(","));
    if let Some(data) = json.get("data").filter(|d| !d.is_null()) {
        text.push(' ');
        text.push_str(&data.to_string());
    }
    text
}

fn describe_ids(ids: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    if let Some(d) = ids.get("device_ids") {
        format!(
            "{}/{}",
            s(&d["application_ids"]["application_id"]),
            s(&d["device_id"])
        )
    } else if let Some(a) = ids.get("application_ids") {
        format!("app:{}", s(&a["application_id"]))
    } else if let Some(g) = ids.get("gateway_ids") {
        format!("gtw:{}", s(&g["gateway_id"]))
    } else if let Some(o) = ids.get("organization_ids") {
        format!("org:{}", s(&o["organization_id"]))
    } else if let Some(u) = ids.get("user_ids") {
        format!("user:{}", s(&u["user_id"]))
    } else {
        ids.to_string()
    }
}

/// Runs an `events` subcommand.
pub async fn run(ctx: &Ctx, cmd: EventsCommand) -> Result<()> {
    let EventsCommand::Subscribe(args) = cmd;
    let identifiers = filter(&args).map_err(|e| anyhow::Error::new(UsageError(e)))?;
    let mut stream = ctx
        .api
        .events()
        .stream(StreamEventsRequest {
            identifiers,
            tail: args.tail,
            after: None,
            names: args.names.clone(),
        })
        .await
        .ctx(|| "subscribe to events".into())?;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            next = stream.next() => match next {
                None => return Ok(()),
                Some(Err(s)) => return Err(crate::client::rpc_error("event stream", s)),
                Some(Ok(event)) => match ctx.out {
                    OutputFormat::Json => println!("{}", output::to_json(&event)),
                    OutputFormat::Table => println!("{}", line(&event)),
                },
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(apps: &[&str], devs: &[&str], gtws: &[&str]) -> SubscribeArgs {
        let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect();
        SubscribeArgs {
            applications: v(apps),
            devices: v(devs),
            gateways: v(gtws),
            names: Vec::new(),
            tail: 0,
        }
    }

    #[test]
    fn device_under_its_application_filters_on_the_device_only() {
        let f = filter(&args(&["app-1"], &["dev-1"], &["gw-1"])).unwrap();
        assert_eq!(f.len(), 2);
        match &f[0].ids {
            Some(Ids::DeviceIds(d)) => {
                assert_eq!(d.device_id, "dev-1");
                assert_eq!(d.application_ids.as_ref().unwrap().application_id, "app-1");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&f[1].ids, Some(Ids::GatewayIds(g)) if g.gateway_id == "gw-1"));
        let f = filter(&args(&["app-1"], &["app-2/dev-9"], &[])).unwrap();
        assert_eq!(f.len(), 2, "the application stays a filter of its own");
        assert!(
            filter(&args(&[], &["dev-1"], &[]))
                .unwrap_err()
                .contains("--application")
        );
        assert!(filter(&args(&[], &[], &[])).is_err());
    }

    #[test]
    fn event_line_names_time_event_and_entities() {
        let mut event = Event {
            name: "ns.up.data.receive".into(),
            time: Some(tern_api::Timestamp {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            identifiers: filter(&args(&["app-1"], &["dev-1"], &[])).unwrap(),
            ..Default::default()
        };
        assert_eq!(
            line(&event),
            "2023-11-14T22:13:20Z ns.up.data.receive app-1/dev-1"
        );
        event
            .set_data(&ApplicationIdentifiers {
                application_id: "x-1".into(),
            })
            .unwrap();
        assert!(
            line(&event).ends_with(r#"{"applicationId":"x-1"}"#) || line(&event).contains("x-1")
        );
    }
}
