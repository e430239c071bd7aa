//! The configuration reference, `docs/cli.md`, generated from the clap
//! definitions (`estate cli-reference`), so it cannot drift: a test compares
//! the file with this output.

use std::fmt::Write as _;

use clap::CommandFactory;

use crate::Cli;

/// Renders the reference of every subcommand as Markdown.
pub(crate) fn markdown() -> String {
    let mut cmd = Cli::command();
    cmd.build();
    let mut s = String::new();
    let _ = writeln!(s, "# estate command-line reference\n");
    let _ = writeln!(
        s,
        "Generated from the clap definitions by `estate cli-reference > docs/cli.md`; a test fails \
         when this file and the binary disagree.\n\n\
         Every option can also be set through the environment variable shown, or in the TOML file \
         given by `--config`: a table per subcommand (`[ingest]`) whose keys are the long option \
         names. Precedence: command line, then environment, then the file, then the default.\n"
    );
    let _ = writeln!(s, "## Global options\n");
    let globals: Vec<&clap::Arg> = cmd.get_arguments().filter(|a| a.is_global_set() && !skip(a)).collect();
    table(&mut s, globals.into_iter());
    let subs: Vec<&clap::Command> = cmd.get_subcommands().filter(|c| shown(c)).collect();
    let _ = writeln!(s, "## Subcommands\n");
    for c in &subs {
        let _ = writeln!(s, "- [`estate {}`](#estate-{}): {}", c.get_name(), c.get_name(), first_line(c));
    }
    let _ = writeln!(s);
    for c in subs {
        section(&mut s, c, &format!("estate {}", c.get_name()));
    }
    s
}

fn first_line(c: &clap::Command) -> String {
    c.get_about().map(|a| a.to_string()).unwrap_or_default().lines().next().unwrap_or_default().to_owned()
}

fn section(s: &mut String, c: &clap::Command, path: &str) {
    let _ = writeln!(s, "## {path}\n");
    if let Some(about) = c.get_long_about().or_else(|| c.get_about()) {
        let _ = writeln!(s, "{}\n", about.to_string().trim());
    }
    let usage = c.clone().render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    let _ = writeln!(s, "```\n{}\n```\n", usage.trim());
    let args: Vec<&clap::Arg> = c.get_arguments().filter(|a| !a.is_global_set() && !skip(a)).collect();
    if !args.is_empty() {
        table(s, args.into_iter());
    }
    if let Some(after) = c.get_after_long_help().or_else(|| c.get_after_help()) {
        let _ = writeln!(s, "{}\n", after.to_string().trim());
    }
    let subs: Vec<&clap::Command> = c.get_subcommands().filter(|x| shown(x)).collect();
    for sub in subs {
        section(s, sub, &format!("{path} {}", sub.get_name()));
    }
}

fn shown(c: &clap::Command) -> bool {
    !c.is_hide_set() && c.get_name() != "help"
}

fn skip(a: &clap::Arg) -> bool {
    a.is_hide_set() || matches!(a.get_id().as_str(), "help" | "version")
}

fn table<'a>(s: &mut String, args: impl Iterator<Item = &'a clap::Arg>) {
    let _ = writeln!(s, "| option | environment | default | meaning |");
    let _ = writeln!(s, "|---|---|---|---|");
    for a in args {
        let name = match (a.get_long(), a.get_short()) {
            (Some(l), _) => format!("`--{l}`"),
            (None, Some(c)) => format!("`-{c}`"),
            (None, None) => format!("`<{}>`", a.get_id().as_str().to_uppercase()),
        };
        let takes_value = a.get_num_args().map(|n| n.takes_values()).unwrap_or(true)
            && !matches!(a.get_action(), clap::ArgAction::SetTrue | clap::ArgAction::SetFalse | clap::ArgAction::Count);
        let name = match (takes_value, a.get_long()) {
            (true, Some(l)) => {
                let v = a.get_value_names().and_then(|v| v.first()).map_or_else(|| a.get_id().as_str().to_uppercase(), |v| v.to_string());
                format!("`--{l} <{v}>`")
            }
            _ => name,
        };
        let env = a.get_env().map(|e| format!("`{}`", e.to_string_lossy())).unwrap_or_default();
        let default = {
            let d: Vec<String> = a.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            if d.is_empty() || !takes_value { String::new() } else { format!("`{}`", d.join(",")) }
        };
        let mut help = a.get_long_help().or_else(|| a.get_help()).map(|h| h.to_string()).unwrap_or_default();
        let values: Vec<String> = a.get_possible_values().iter().filter(|v| !v.is_hide_set()).map(|v| format!("`{}`", v.get_name())).collect();
        if !values.is_empty() && takes_value {
            if !help.ends_with('.') {
                help.push('.');
            }
            let _ = write!(help, " One of {}.", values.join(", "));
        }
        if a.is_required_set() {
            help.insert_str(0, "**Required.** ");
        }
        let _ = writeln!(s, "| {name} | {env} | {default} | {} |", help.replace('|', "\\|").replace('\n', " "));
    }
    let _ = writeln!(s);
}
