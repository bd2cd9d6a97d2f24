//! Finding queue `q`'s IRQ: `/proc/interrupts` parsed, action names matched to the interface, its device
//! or its PCI address (see the parent module's doc), misc and TX-only vectors left out, and the `msi_irqs`
//! order as the fallback.

use std::collections::BTreeSet;

use super::MISC_WORDS;

/// One numbered line of `/proc/interrupts`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct IrqLine {
    pub(super) irq: u32,
    /// Everything after the per-CPU counts (chip, hwirq, action names), split on whitespace and commas.
    pub(super) tokens: Vec<String>,
}

impl IrqLine {
    /// The action name as best known: the last token.
    pub(super) fn name(&self) -> &str {
        self.tokens.last().map_or("", String::as_str)
    }
}

pub(super) fn parse_interrupts(text: &str) -> Vec<IrqLine> {
    let mut lines = text.lines().peekable();
    let ncpu = match lines.peek() {
        Some(h) if h.split_whitespace().next().is_some_and(|t| t.starts_with("CPU")) => {
            let n = h.split_whitespace().filter(|t| t.starts_with("CPU")).count();
            lines.next();
            n
        }
        _ => usize::MAX,
    };
    let mut out = Vec::new();
    for line in lines {
        let Some((key, rest)) = line.split_once(':') else { continue };
        let Ok(irq) = key.trim().parse::<u32>() else { continue };
        let mut toks = rest.split_whitespace().peekable();
        let mut skipped = 0;
        while skipped < ncpu && toks.peek().is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit())) {
            toks.next();
            skipped += 1;
        }
        let tokens = toks.flat_map(|t| t.split(',')).filter(|t| !t.is_empty()).map(str::to_owned).collect();
        out.push(IrqLine { irq, tokens });
    }
    out
}

/// Classify the label between a name and a queue index: `Some(0)` names RX, `Some(1)` bare or other,
/// `None` TX-only or misc.
fn classify_label(label: &str) -> Option<u8> {
    let l = label.to_ascii_lowercase();
    if l.is_empty() {
        return Some(1);
    }
    if MISC_WORDS.iter().any(|w| l.contains(w)) {
        return None;
    }
    if l.contains("rx") || l == "input" || l.contains("comp") {
        return Some(0);
    }
    if l.contains("tx") || l == "output" {
        return None;
    }
    Some(1)
}

/// `rest` is what follows a name: "-TxRx-3", "-rx-3", "-3", "-input.3", "_comp3". Returns (rank, queue).
fn queue_suffix(rest: &str) -> Option<(u8, usize)> {
    let body = rest.strip_prefix(['-', '_', '.'])?;
    let start = body.rfind(|c: char| !c.is_ascii_digit()).map_or(0, |i| i + 1);
    let digits = &body[start..];
    if digits.is_empty() || digits.len() > 6 {
        return None;
    }
    let q = digits.parse().ok()?;
    let label = body[..start].trim_end_matches(['-', '_', '.']);
    if !label.chars().all(|c| c.is_ascii_alphabetic() || c == '-' || c == '_') {
        return None;
    }
    classify_label(label).map(|rank| (rank, q))
}

/// `name` inside `token` at a boundary, followed by a queue suffix.
fn match_after(token: &str, name: &str) -> Option<(u8, usize)> {
    if name.is_empty() {
        return None;
    }
    token.match_indices(name).find_map(|(i, _)| {
        let boundary = token[..i].chars().next_back().is_none_or(|c| matches!(c, '-' | '_' | ':' | '@'));
        if boundary {
            queue_suffix(&token[i + name.len()..])
        } else {
            None
        }
    })
}

/// Which queue (and how surely) an action-name token names for this device.
fn token_queue(token: &str, iface: &str, dev_name: Option<&str>, pci: Option<&str>) -> Option<(u8, usize)> {
    if let Some(m) = match_after(token, iface) {
        return Some(m);
    }
    if let Some(m) = dev_name.and_then(|d| match_after(token, d)) {
        return Some(m);
    }
    // mlx5_comp3@pci:0000:3b:00.0, mlx4-3@0000:03:00.0
    let pci = pci?;
    let (left, right) = token.split_once('@')?;
    if right.strip_prefix("pci:").unwrap_or(right) != pci {
        return None;
    }
    queue_suffix(&left[left.find(['-', '_'])?..])
}

fn is_misc_vector(line: &IrqLine, iface: &str) -> bool {
    line.tokens.iter().any(|t| {
        let l = t.to_ascii_lowercase();
        t == iface
            || MISC_WORDS.iter().any(|w| l.contains(w))
            || l.contains("output")
            || ((l.contains("-tx") || l.contains("_tx")) && !l.contains("rx"))
    })
}

/// One queue's IRQ and the name it was found by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct QueueIrq {
    pub(super) irq: u32,
    pub(super) name: String,
}

/// How [`find_queue_irqs`] found them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Method {
    Name,
    MsiOrder,
    NotFound,
}

pub(super) fn find_queue_irqs(
    lines: &[IrqLine],
    iface: &str,
    dev_name: Option<&str>,
    pci: Option<&str>,
    msi: &BTreeSet<u32>,
    queues: usize,
) -> (Vec<Option<QueueIrq>>, Method) {
    let mut best: Vec<Option<(u8, u32, &str)>> = vec![None; queues];
    for line in lines {
        for t in &line.tokens {
            let Some((rank, q)) = token_queue(t, iface, dev_name, pci) else { continue };
            if q >= queues {
                continue;
            }
            let cand = (rank, line.irq, t.as_str());
            if best[q].is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                best[q] = Some(cand);
            }
        }
    }
    let mut found_any = best.iter().any(Option::is_some);
    if !found_any {
        // Any queue-named vector at all (a queue beyond `queues` still proves names work).
        found_any =
            lines.iter().any(|l| l.tokens.iter().any(|t| token_queue(t, iface, dev_name, pci).is_some()));
    }
    if found_any {
        let v = best.into_iter().map(|b| b.map(|(_, irq, name)| QueueIrq { irq, name: name.to_owned() }));
        return (v.collect(), Method::Name);
    }
    let mut vecs: Vec<&IrqLine> =
        lines.iter().filter(|l| msi.contains(&l.irq) && !is_misc_vector(l, iface)).collect();
    vecs.sort_by_key(|l| l.irq);
    if vecs.is_empty() {
        return (vec![None; queues], Method::NotFound);
    }
    let v = (0..queues).map(|q| vecs.get(q).map(|l| QueueIrq { irq: l.irq, name: l.name().to_owned() }));
    (v.collect(), Method::MsiOrder)
}
