//! The README's shell lines, as tests run them: a fenced block, and the
//! example job's values replaced by a test job's.

use serde_json::Value;

pub const README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/README.md");

/// The lines of the first fenced block opened by `fence` (e.g. "```sh") at
/// or after line `from`.
pub fn fenced_block(lines: &[&str], from: usize, fence: &str) -> Option<(usize, Vec<String>)> {
    let start = from + lines[from..].iter().position(|l| l.trim() == fence)?;
    let len = lines[start + 1..].iter().position(|l| l.trim() == "```")?;
    Some((
        start,
        lines[start + 1..start + 1 + len]
            .iter()
            .map(|l| l.trim().to_string())
            .collect(),
    ))
}

/// Replaces every `from` of `subst` in `text` in one pass, the longest
/// match first at each position (so a value is never replaced inside a
/// replacement). Returns the text and the `from`s that did not occur.
pub fn substitute(text: &str, subst: &[(String, String)]) -> (String, Vec<String>) {
    let mut order: Vec<&(String, String)> = subst.iter().collect();
    order.sort_by_key(|(from, _)| std::cmp::Reverse(from.len()));
    let mut used = vec![false; order.len()];
    let mut out = String::new();
    let mut rest = text;
    'outer: while !rest.is_empty() {
        for (i, (from, to)) in order.iter().enumerate() {
            if rest.starts_with(from.as_str()) {
                out.push_str(to);
                rest = &rest[from.len()..];
                used[i] = true;
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap();
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    let absent = order
        .iter()
        .zip(used)
        .filter(|(_, u)| !u)
        .map(|((from, _), _)| from.clone())
        .collect();
    (out, absent)
}

/// The README's job file example (its first ```json block with a target).
pub fn readme_job_example(lines: &[&str]) -> Value {
    let mut from = 0;
    while let Some((start, block)) = fenced_block(lines, from, "```json") {
        if let Ok(v) = serde_json::from_str::<Value>(&block.join("\n"))
            && v["target"].is_object()
        {
            return v;
        }
        from = start + 1;
    }
    panic!("README.md: no ```json block with the job file example (a \"target\" object)");
}
