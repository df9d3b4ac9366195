//! `sluice connectors list` and `sluice connectors spec NAME`.

use std::io::Write;

use sluice_sdk::spec::{Parameter, Validation};
use sluice_sdk::{Registry, Specification};

use super::CommandError;

/// Which sides a plugin has, as words.
fn sides(registry: &Registry, name: &str) -> Vec<&'static str> {
    let Ok(plugin) = registry.get(name) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    if plugin.new_source().is_some() {
        out.push("source");
    }
    if plugin.new_destination().is_some() {
        out.push("destination");
    }
    out
}

/// Writes one line per connector: name, version, sides and summary, under a header.
pub fn list(registry: &Registry, out: &mut dyn Write) -> Result<(), CommandError> {
    let specs = registry.list();
    let rows: Vec<[String; 4]> = specs
        .iter()
        .map(|s| {
            [
                s.name.clone(),
                s.version.clone(),
                sides(registry, &s.name).join(","),
                s.summary.clone(),
            ]
        })
        .collect();
    let header = ["NAME", "VERSION", "TYPE", "SUMMARY"].map(String::from);
    let mut widths = [0usize; 3];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in widths.iter_mut().zip(row.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        writeln!(
            out,
            "{:w0$}  {:w1$}  {:w2$}  {}",
            row[0],
            row[1],
            row[2],
            row[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        )?;
    }
    Ok(())
}

/// Writes a connector's full specification, human-readable or as JSON.
pub fn spec(
    registry: &Registry,
    name: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<(), CommandError> {
    let plugin = registry.get(name)?;
    let spec = plugin.specification();
    let sides = sides(registry, name);
    if json {
        let mut value = serde_json::to_value(&spec)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("types".into(), serde_json::json!(sides));
        }
        serde_json::to_writer_pretty(&mut *out, &value)?;
        writeln!(out)?;
        return Ok(());
    }
    write_human(&spec, &sides, out)?;
    Ok(())
}

fn write_human(spec: &Specification, sides: &[&str], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(out, "{} {}", spec.name, spec.version)?;
    writeln!(out, "{}", spec.summary)?;
    writeln!(out)?;
    writeln!(out, "Type:    {}", sides.join(", "))?;
    writeln!(out, "Author:  {}", spec.author)?;
    writeln!(out, "Plugin:  builtin:{}", spec.name)?;
    if !spec.description.trim().is_empty() {
        writeln!(out)?;
        for line in spec.description.trim_end().lines() {
            writeln!(out, "{line}")?;
        }
    }
    for (title, params, side) in [
        ("Source parameters", &spec.source_params, "source"),
        (
            "Destination parameters",
            &spec.destination_params,
            "destination",
        ),
    ] {
        if !sides.contains(&side) {
            continue;
        }
        writeln!(out)?;
        if params.is_empty() {
            writeln!(out, "{title}: none")?;
            continue;
        }
        writeln!(out, "{title}:")?;
        for (name, p) in params {
            writeln!(out, "  {name} ({})", facts(p).join(", "))?;
            for line in p.description.trim().lines() {
                writeln!(out, "      {line}")?;
            }
        }
    }
    Ok(())
}

/// Type, requiredness, default and rules of a parameter, as short phrases.
fn facts(p: &Parameter) -> Vec<String> {
    let kind = serde_json::to_value(p.kind)
        .ok()
        .and_then(|v| v.as_str().map(String::from))
        .unwrap_or_else(|| format!("{:?}", p.kind).to_lowercase());
    let mut facts = vec![kind];
    if p.is_required() {
        facts.push("required".into());
    }
    if let Some(d) = &p.default {
        facts.push(format!("default {d:?}"));
    }
    for v in &p.validations {
        match v {
            Validation::Required => {}
            Validation::GreaterThan(n) => facts.push(format!("> {n}")),
            Validation::LessThan(n) => facts.push(format!("< {n}")),
            Validation::Inclusion(values) => facts.push(format!("one of: {}", values.join(" | "))),
            Validation::Exclusion(values) => facts.push(format!("not: {}", values.join(" | "))),
            Validation::Regex(re) => facts.push(format!("matches /{re}/")),
        }
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_sdk::ParameterType;

    #[test]
    fn parameter_facts_read_naturally() {
        let p = Parameter::new(ParameterType::Int, "how many")
            .default_value("10")
            .validate(Validation::GreaterThan(0.0))
            .validate(Validation::Inclusion(vec!["1".into(), "10".into()]));
        assert_eq!(
            facts(&p),
            ["int", "default \"10\"", "> 0", "one of: 1 | 10"]
        );
        let p = Parameter::new(ParameterType::File, "where").required();
        assert_eq!(facts(&p), ["file", "required"]);
    }
}
