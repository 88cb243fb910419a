//! Human tables and JSON output, and what happens when nobody reads it any more.

/// Ends the process quietly, with status 0, when a write to stdout finds it closed
/// (`micro services | head -1`, `… | grep -q x`): the reader chose to stop, which is no
/// error of ours. `print!` and `println!` panic on a failed write; this hook turns the
/// broken-pipe panic (EPIPE; ERROR_NO_DATA on Windows) into the exit, for every command at once. Any
/// other panic is reported as before.
pub(crate) fn exit_quietly_when_stdout_closes() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        let broken_pipe = message.contains("(os error 32)") || (cfg!(windows) && message.contains("(os error 232)"));
        if message.starts_with("failed printing to stdout") && broken_pipe {
            std::process::exit(0);
        }
        report(info);
    }));
}

/// Prints rows as an aligned table with a header.
pub(crate) fn table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.len());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let s: Vec<String> = cells.iter().enumerate().map(|(i, c)| format!("{:w$}", c, w = widths[i])).collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// Prints JSON, pretty.
pub(crate) fn json(v: &serde_json::Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string()));
}

/// What a command that acts (creates, deletes, sets) reports: `json` (one line) with
/// `-o json`, else `text` for people (nothing when it is `None`). Every command prints
/// JSON on stdout under `-o json`, so scripts can always parse what it said.
pub(crate) fn done(json_mode: bool, json: serde_json::Value, text: Option<String>) {
    if json_mode {
        println!("{json}");
    } else if let Some(text) = text {
        println!("{text}");
    }
}
