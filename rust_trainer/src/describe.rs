//! `rust-trainer describe`: every flag of `train` as JSON, so that tools can check what they
//! are about to pass (the orchestrator validates search spaces against it).
//!
//! Names, help, defaults and choices come from clap's own definitions; types from each
//! flag's value parser; ranges from [`crate::config::RANGES`], the table `Config` enforces.

use clap::builder::{ArgAction, ValueParser};
use clap::CommandFactory;
use serde::Serialize;

use crate::cli::Cli;
use crate::config::{range_of, Range};

#[derive(Debug, Serialize)]
pub struct Flag {
    /// The name as in the `start` event's config: `batch_size`.
    pub name: String,
    /// The command-line spelling: `--batch-size`.
    pub flag: String,
    /// `bool`, `int`, `float`, `string`, `path`, `choice` or `int_list`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub choices: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range: Option<Range>,
    pub default: Option<String>,
    pub help: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub env: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Description {
    pub version: &'static str,
    pub flags: Vec<Flag>,
}

fn kind_of(parser: &ValueParser) -> &'static str {
    let id = parser.type_id();
    let is = |other: ValueParser| other.type_id() == id;
    if is(clap::value_parser!(f64).into()) {
        "float"
    } else if is(clap::value_parser!(usize).into())
        || is(clap::value_parser!(i64).into())
        || is(clap::value_parser!(u64).into())
    {
        "int"
    } else if is(clap::value_parser!(std::path::PathBuf)) {
        "path"
    } else {
        "string"
    }
}

/// Whether the flag's values are unsigned integers (a list's, for a list): its range then
/// starts at 0 where `RANGES` gives none, since the parser refuses a sign.
fn is_unsigned(parser: &ValueParser) -> bool {
    let id = parser.type_id();
    let unsigned: [ValueParser; 2] =
        [clap::value_parser!(usize).into(), clap::value_parser!(u64).into()];
    unsigned.iter().any(|other| other.type_id() == id)
}

pub fn describe() -> Description {
    let command = Cli::command();
    let train = command.find_subcommand("train").expect("the train subcommand exists");
    let flags = train
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            if matches!(long, "help" | "version") {
                return None;
            }
            let choices: Vec<String> =
                arg.get_possible_values().iter().map(|v| v.get_name().to_string()).collect();
            let is_switch = matches!(arg.get_action(), ArgAction::SetTrue);
            let kind = if is_switch {
                "bool"
            } else if !choices.is_empty() {
                "choice"
            } else if arg.get_value_delimiter().is_some() {
                "int_list"
            } else {
                kind_of(arg.get_value_parser())
            };
            let name = long.replace('-', "_");
            let default =
                arg.get_default_values().first().map(|v| v.to_string_lossy().into_owned());
            let unsigned =
                matches!(kind, "int" | "int_list") && is_unsigned(arg.get_value_parser());
            Some(Flag {
                range: range_of(&name).or_else(|| unsigned.then(|| Range::at_least(0.0))),
                choices: (!choices.is_empty() && !is_switch).then_some(choices),
                default: if is_switch { Some("false".to_string()) } else { default },
                help: arg.get_help().map(|h| h.to_string()).unwrap_or_default(),
                env: arg.get_env().map(|e| e.to_string_lossy().into_owned()),
                flag: format!("--{long}"),
                name,
                kind,
            })
        })
        .collect();
    Description { version: env!("CARGO_PKG_VERSION"), flags }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flag<'a>(description: &'a Description, name: &str) -> &'a Flag {
        description.flags.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("{name}"))
    }

    #[test]
    fn flags_carry_type_range_default_and_help() {
        let description = describe();
        let lr = flag(&description, "lr");
        // lr: a float above 0 with its default and help line.
        assert_eq!((lr.flag.as_str(), lr.kind), ("--lr", "float"));
        assert_eq!(lr.range.unwrap().low, Some(0.0));
        assert_eq!(lr.default.as_deref(), Some("0.001"));
        assert!(!lr.help.is_empty());

        let optimizer = flag(&description, "optimizer");
        assert_eq!(optimizer.kind, "choice");
        assert_eq!(optimizer.choices.as_ref().unwrap(), &["sgd", "adam", "adamw", "rmsprop"]);
        assert_eq!(flag(&description, "batch_size").kind, "int");
        assert_eq!(flag(&description, "nesterov").kind, "bool");
        assert_eq!(flag(&description, "milestones").kind, "int_list");
        // Unsigned integers (single or listed) start at 0: a sign is refused by the parser.
        for name in ["split_seed", "milestones", "seed"] {
            let range = flag(&description, name).range.unwrap_or_else(|| panic!("{name}"));
            assert_eq!((range.low, range.high), (Some(0.0), None), "{name}");
        }
        assert_eq!(flag(&description, "data_dir").env.as_deref(), Some("RUST_TRAINER_DATA_DIR"));
        // No clap housekeeping flags.
        assert!(description.flags.iter().all(|f| f.name != "help"));
    }
}
