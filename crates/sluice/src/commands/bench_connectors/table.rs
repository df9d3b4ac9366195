//! The connector benchmark's results as a markdown table.

use std::io::Write;

/// One line of the table: a scenario's Sluice figure beside a baseline measured in the same run.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub scenario: String,
    /// Records the run sent.
    pub records: u64,
    /// Distinct records that arrived at the far end (checked against `records`).
    pub arrived: u64,
    /// Sluice's figure.
    pub sluice: String,
    /// The baseline and its figure.
    pub baseline: String,
    /// The target.
    pub target: String,
    /// Sluice's figure over the baseline's.
    pub ratio: Option<f64>,
    /// Whether the target was met, when there is one.
    pub met: Option<bool>,
}

/// `v` rounded, with thousands separated by commas.
pub fn rate(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Writes the table.
pub fn write(rows: &[Row], out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "| scenario | records (arrived) | Sluice | baseline (same run) | target | Sluice / baseline | target met |"
    )?;
    writeln!(out, "|---|---:|---|---|---|---:|---|")?;
    for r in rows {
        writeln!(
            out,
            "| {} | {} ({}) | {} | {} | {} | {} | {} |",
            r.scenario,
            rate(r.records as f64),
            rate(r.arrived as f64),
            r.sluice,
            r.baseline,
            r.target,
            r.ratio
                .map_or("—".to_string(), |p| format!("{:.0} %", p * 100.0)),
            match r.met {
                Some(true) => "yes",
                Some(false) => "NO",
                None => "—",
            }
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::rate;

    #[test]
    fn rates_are_grouped() {
        assert_eq!(rate(999.4), "999");
        assert_eq!(rate(51_234.6), "51,235");
    }
}
