//! `micro db export` and `micro db import`: a collection's records as JSON lines or CSV,
//! out and in. Every other `micro db …` command is dynamic (the `db` service's
//! endpoints, like `micro db list --collection todos`).

use crate::cli::{Ctx, status_err};
use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Map, Value, json};
use std::io::{BufRead, Write};

/// Records a page read and a batch written.
const PAGE: usize = 500;

/// The usage of both commands.
const USAGE: &str = "usage: micro db export --collection NAME [--format jsonl|csv] [--output FILE]\n       \
                     micro db import --collection NAME --file FILE [--format jsonl|csv]";

/// `--name value` and `--name=value` flags of `args`, each name once.
fn flags(args: &[String], known: &[&str]) -> Result<std::collections::BTreeMap<String, String>> {
    let mut out = std::collections::BTreeMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(name) = a.strip_prefix("--") else { bail!("unexpected {a:?}\n{USAGE}") };
        let (name, value) = match name.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None => (name.to_string(), it.next().ok_or_else(|| anyhow!("--{name} needs a value"))?.clone()),
        };
        if !known.contains(&name.as_str()) {
            bail!(
                "unknown flag --{name}; valid flags: {}",
                known.iter().map(|k| format!("--{k}")).collect::<Vec<_>>().join(", ")
            );
        }
        if out.insert(name.clone(), value).is_some() {
            bail!("--{name} is given twice");
        }
    }
    Ok(out)
}

/// The format a flag or a file's extension names (JSON lines by default).
fn format(flag: Option<&String>, file: Option<&String>) -> Result<&'static str> {
    let named = flag.map(String::as_str).or_else(|| {
        file.and_then(|f| std::path::Path::new(f).extension()).and_then(|e| e.to_str()).map(|e| match e {
            "csv" => "csv",
            _ => "jsonl",
        })
    });
    match named.unwrap_or("jsonl") {
        "jsonl" | "json" | "ndjson" => Ok("jsonl"),
        "csv" => Ok("csv"),
        other => bail!("unknown format {other:?}: jsonl or csv"),
    }
}

/// Runs `micro db export|import …` (`args` after `db`); `None` when it is neither.
pub(crate) async fn run(c: &Ctx, args: &[String]) -> Option<Result<()>> {
    match args.first().map(String::as_str) {
        Some("export") => Some(export(c, &args[1..]).await),
        Some("import") => Some(import(c, &args[1..]).await),
        _ => None,
    }
}

async fn export(c: &Ctx, args: &[String]) -> Result<()> {
    let f = flags(args, &["collection", "format", "output"])?;
    let collection = f.get("collection").ok_or_else(|| anyhow!("--collection is required\n{USAGE}"))?;
    let format = format(f.get("format"), f.get("output"))?;
    let mut records = Vec::new();
    let mut out: Box<dyn Write> = match f.get("output") {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("cannot write {path}"))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    // Pages by id, so records written meanwhile neither shift nor repeat any.
    let mut after = String::new();
    let mut count = 0usize;
    loop {
        let filter = if after.is_empty() { String::new() } else { format!("id > '{after}'") };
        let req = json!({"collection": collection, "filter": filter, "sort": "id", "per_page": PAGE});
        let page = c.client().call_json("db", "Db.List", &req).await.map_err(status_err)?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        for r in &items {
            if format == "jsonl" {
                writeln!(out, "{r}")?;
            } else {
                records.push(r.clone());
            }
        }
        count += items.len();
        match items.last().and_then(|r| r["id"].as_str()) {
            Some(id) if items.len() == PAGE => after = id.to_string(),
            _ => break,
        }
    }
    if format == "csv" {
        write_csv(&mut out, &records)?;
    }
    out.flush()?;
    drop(out);
    if f.contains_key("output") {
        eprintln!("exported {count} records of {collection}");
    }
    Ok(())
}

/// Whether a text cell would be a formula to a spreadsheet (`=`, `+`, `-`, `@`, a tab
/// or a carriage return first): such cells are written with a `'` first, which import
/// takes off again, so opening an export runs nothing a record's author wrote.
fn formula(cell: &str) -> bool {
    cell.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

/// The records as CSV: a header of every field (the record's own first), a row each;
/// text as it is (see [`formula`]), everything else as JSON.
fn write_csv(out: &mut dyn Write, records: &[Value]) -> Result<()> {
    let mut columns: Vec<String> = ["id", "created", "updated", "version"].map(String::from).to_vec();
    for r in records {
        for k in r.as_object().into_iter().flat_map(|m| m.keys()) {
            if !columns.contains(k) {
                columns.push(k.clone());
            }
        }
    }
    let line = |cells: Vec<String>| cells.into_iter().map(|c| quote(&c)).collect::<Vec<_>>().join(",");
    writeln!(out, "{}", line(columns.clone()))?;
    for r in records {
        let cells = columns
            .iter()
            .map(|k| match r.get(k) {
                None | Some(Value::Null) => String::new(),
                Some(Value::String(s)) if formula(s) => format!("'{s}"),
                Some(Value::String(s)) => s.clone(),
                Some(v) => v.to_string(),
            })
            .collect();
        writeln!(out, "{}", line(cells))?;
    }
    Ok(())
}

fn quote(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) || cell.starts_with(' ') || cell.ends_with(' ') {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}

/// The rows of a CSV text (RFC 4180: quoted cells may hold commas, quotes and lines).
fn parse_csv(text: &str) -> Result<Vec<Vec<String>>> {
    let mut rows = Vec::new();
    let (mut row, mut cell) = (Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    let mut line = 1;
    while let Some(ch) = chars.next() {
        match (quoted, ch) {
            (true, '"') if chars.peek() == Some(&'"') => {
                chars.next();
                cell.push('"');
            }
            (true, '"') => quoted = false,
            (true, c) => {
                if c == '\n' {
                    line += 1;
                }
                cell.push(c);
            }
            (false, '"') if cell.is_empty() => quoted = true,
            (false, '"') => bail!("line {line}: a quote inside an unquoted cell"),
            (false, ',') => row.push(std::mem::take(&mut cell)),
            (false, '\r') => {}
            (false, '\n') => {
                row.push(std::mem::take(&mut cell));
                rows.push(std::mem::take(&mut row));
                line += 1;
            }
            (false, c) => cell.push(c),
        }
    }
    if quoted {
        bail!("line {line}: a quoted cell is not closed");
    }
    if !cell.is_empty() || !row.is_empty() {
        row.push(cell);
        rows.push(row);
    }
    Ok(rows)
}

/// A record's fields from a CSV row: empty cells left out, JSON values (numbers, `true`,
/// lists) as such, anything else as text.
fn csv_record(header: &[String], row: Vec<String>, line: usize) -> Result<Map<String, Value>> {
    if row.len() != header.len() {
        bail!("line {line}: {} cells, the header has {}", row.len(), header.len());
    }
    let mut m = Map::new();
    for (k, v) in header.iter().zip(row) {
        if v.is_empty() {
            continue;
        }
        if let Some(text) = v.strip_prefix('\'').filter(|t| formula(t)) {
            m.insert(k.clone(), Value::String(text.to_string()));
            continue;
        }
        // An id is text, whatever it looks like.
        if k == "id" {
            m.insert(k.clone(), Value::String(v));
            continue;
        }
        let value = match serde_json::from_str::<Value>(&v) {
            Ok(j @ (Value::Number(_) | Value::Bool(_) | Value::Array(_) | Value::Object(_))) => j,
            _ => Value::String(v),
        };
        m.insert(k.clone(), value);
    }
    Ok(m)
}

async fn import(c: &Ctx, args: &[String]) -> Result<()> {
    let f = flags(args, &["collection", "file", "format"])?;
    let collection = f.get("collection").ok_or_else(|| anyhow!("--collection is required\n{USAGE}"))?;
    let path = f.get("file").ok_or_else(|| anyhow!("--file is required (- for standard input)\n{USAGE}"))?;
    let format = format(f.get("format"), Some(path))?;
    let text = if path == "-" {
        let mut s = String::new();
        for line in std::io::stdin().lock().lines() {
            s.push_str(&line?);
            s.push('\n');
        }
        s
    } else {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?
    };
    // Every record is read and checked before anything is written.
    let mut records: Vec<(usize, Map<String, Value>)> = Vec::new();
    if format == "csv" {
        let mut rows = parse_csv(&text)?.into_iter();
        let header = rows.next().ok_or_else(|| anyhow!("{path}: no header row"))?;
        for (i, row) in rows.enumerate() {
            if row.len() == 1 && row[0].is_empty() {
                continue;
            }
            records.push((i + 2, csv_record(&header, row, i + 2)?));
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<Value>(line) {
                Ok(Value::Object(m)) => records.push((i + 1, m)),
                Ok(_) => bail!("line {}: not a JSON object", i + 1),
                Err(e) => bail!("line {}: not JSON: {e}", i + 1),
            }
        }
    }
    let mut done = 0usize;
    for chunk in records.chunks(PAGE) {
        let writes: Vec<Value> = chunk
            .iter()
            .map(|(_, m)| {
                let mut data = m.clone();
                let id = data.remove("id");
                for own in ["created", "updated", "version", "expand"] {
                    data.remove(own);
                }
                let mut w = json!({"action": "create", "data": data});
                if let Some(id) = id.filter(|i| i.is_string()) {
                    w["id"] = id;
                }
                w
            })
            .collect();
        let req = json!({"collection": collection, "writes": writes});
        if let Err(e) = c.client().call_json("db", "Db.Batch", &req).await {
            let (first, last) = (chunk[0].0, chunk[chunk.len() - 1].0);
            bail!(
                "lines {first}-{last} were not imported (none of them): {}; {done} records before them were",
                status_err(e)
            );
        }
        done += chunk.len();
    }
    if c.json {
        println!("{}", json!({"imported": done, "collection": collection}));
    } else {
        println!("imported {done} records into {collection}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trips() {
        let records = vec![
            json!({"id": "a", "title": "milk, 2 l", "n": 3, "tags": ["x", "y"], "note": "say \"hi\"\nbye"}),
            json!({"id": "42", "title": " padded ", "done": true, "f": "=HYPERLINK(\"http://x\")", "g": "-1 apples"}),
        ];
        let mut out = Vec::new();
        write_csv(&mut out, &records).unwrap();
        let text = String::from_utf8(out).unwrap();
        let mut rows = parse_csv(&text).unwrap().into_iter();
        let header = rows.next().unwrap();
        let back: Vec<Map<String, Value>> = rows.enumerate().map(|(i, r)| csv_record(&header, r, i).unwrap()).collect();
        assert_eq!(Value::Object(back[0].clone()), records[0]);
        assert_eq!(Value::Object(back[1].clone()), records[1]);
        assert!(
            text.contains(",'-1 apples") && text.contains("\"'=HYPERLINK"),
            "formulas are not cells that run: {text}"
        );
        assert!(parse_csv("a,\"b\n").unwrap_err().to_string().contains("not closed"));
        assert!(parse_csv("a,b\"c\n").unwrap_err().to_string().contains("quote inside"));
        assert!(csv_record(&["a".into()], vec!["1".into(), "2".into()], 3).is_err());
    }
}
