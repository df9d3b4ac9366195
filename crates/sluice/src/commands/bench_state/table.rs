//! The results as a markdown table, and the targets beside what was measured.

use std::io::Write;

use super::measure::Stats;

/// One line of the table: an operation at one concurrency, Sluice beside the direct client.
pub struct Row {
    /// The backend.
    pub backend: &'static str,
    /// What was measured.
    pub operation: String,
    /// Concurrent tasks.
    pub concurrency: usize,
    /// Sluice's figures, or why there are none.
    pub sluice: Result<Stats, String>,
    /// The direct client's figures, or why there are none.
    pub direct: Result<Stats, String>,
}

impl Row {
    /// Sluice's throughput as a share of the direct client's, in percent.
    pub fn ratio(&self) -> Option<f64> {
        match (&self.sluice, &self.direct) {
            (Ok(s), Ok(d)) if d.ops > 0 => Some(s.per_second() / d.per_second() * 100.0),
            _ => None,
        }
    }
}

fn rate(stats: &Result<Stats, String>) -> String {
    match stats {
        Ok(s) => group_thousands(s.per_second()),
        Err(why) => why.clone(),
    }
}

fn p99(stats: &Result<Stats, String>) -> String {
    match stats {
        Ok(s) if s.p99_micros() >= 100.0 => format!("{:.0}", s.p99_micros()),
        Ok(s) => format!("{:.1}", s.p99_micros()),
        Err(_) => "—".to_string(),
    }
}

fn group_thousands(v: f64) -> String {
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
        "| backend | operation | concurrency | Sluice ops/s | Sluice p99 µs | direct ops/s | direct p99 µs | Sluice / direct |"
    )?;
    writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|")?;
    for r in rows {
        writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            r.backend,
            r.operation,
            r.concurrency,
            rate(&r.sluice),
            p99(&r.sluice),
            rate(&r.direct),
            p99(&r.direct),
            r.ratio().map_or("—".to_string(), |p| format!("{p:.0} %")),
        )?;
    }
    Ok(())
}

/// Writes each target of the issue that the rows bear on, with the figure measured.
pub fn write_targets(rows: &[Row], out: &mut impl Write) -> std::io::Result<()> {
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let best = |backend: &str, operation: &str| {
        rows.iter()
            .filter(|r| r.backend == backend && r.operation == operation)
            .filter_map(|r| r.sluice.as_ref().ok().map(Stats::per_second))
            .fold(None, |acc: Option<f64>, v| {
                Some(acc.map_or(v, |a| a.max(v)))
            })
    };
    if let Some(gets) = best("redb", "get") {
        writeln!(
            out,
            "- redb gets/s ≥ 200,000: best {} → {}",
            group_thousands(gets),
            verdict(gets >= 200_000.0)
        )?;
    }
    if let Some(sets) = best("redb", super::BULK_LABEL) {
        writeln!(
            out,
            "- redb durable sets/s in batched mode (bulk set) ≥ 20,000: {} → {}",
            group_thousands(sets),
            verdict(sets >= 20_000.0)
        )?;
    }
    for r in rows
        .iter()
        .filter(|r| r.backend == "postgres" || r.backend == "redis")
    {
        if let Some(ratio) = r.ratio() {
            writeln!(
                out,
                "- {} {} at concurrency {}: Sluice reaches {ratio:.0} % of the direct client (target ≥ 80 %) → {}",
                r.backend,
                r.operation,
                r.concurrency,
                verdict(ratio >= 80.0)
            )?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::group_thousands;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(group_thousands(0.4), "0");
        assert_eq!(group_thousands(999.0), "999");
        assert_eq!(group_thousands(1_000.0), "1,000");
        assert_eq!(group_thousands(1_234_567.8), "1,234,568");
    }
}
