//! Plain-text tables whose columns line up under their headers whatever the
//! cell widths (names longer than a fixed width, numbers of any size).

/// How a column's cells are aligned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    Left,
    Right,
}

/// A table: headers, then rows of cells, rendered with two spaces between columns.
#[derive(Debug)]
pub struct Table {
    head: Vec<(String, Align)>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these columns.
    pub fn new(cols: &[(&str, Align)]) -> Self {
        Self {
            head: cols.iter().map(|(h, a)| (h.to_string(), *a)).collect(),
            rows: Vec::new(),
        }
    }

    /// Adds a row (missing cells are blank, extra ones dropped).
    pub fn row<I, S>(&mut self, cells: I)
    where
        I: IntoIterator<Item = S>,
        S: ToString,
    {
        let mut r: Vec<String> = cells.into_iter().map(|c| c.to_string()).collect();
        r.resize(self.head.len(), String::new());
        self.rows.push(r);
    }

    /// The text, one line per row after the header, each ending in a newline.
    pub fn render(&self) -> String {
        let n = self.head.len();
        let mut w: Vec<usize> = self.head.iter().map(|(h, _)| h.chars().count()).collect();
        for r in &self.rows {
            for (i, c) in r.iter().enumerate() {
                w[i] = w[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        let head: Vec<String> = self.head.iter().map(|(h, _)| h.clone()).collect();
        for r in std::iter::once(&head).chain(self.rows.iter()) {
            let mut line = String::new();
            for (i, c) in r.iter().enumerate() {
                let pad = w[i] - c.chars().count();
                if i > 0 {
                    line.push_str("  ");
                }
                match self.head[i].1 {
                    Align::Right => {
                        line.extend(std::iter::repeat_n(' ', pad));
                        line.push_str(c);
                    }
                    Align::Left => {
                        line.push_str(c);
                        if i + 1 < n {
                            line.extend(std::iter::repeat_n(' ', pad));
                        }
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }

    /// Prints [`Self::render`] to stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_line_up_under_headers_with_long_cells() {
        let mut t = Table::new(&[
            ("BROKER", Align::Left),
            ("TOPIC", Align::Left),
            ("QUEUES", Align::Right),
            ("TYPE", Align::Left),
        ]);
        t.row([
            "broker-a",
            "a-topic-name-much-longer-than-thirty-two-characters",
            "8",
            "NORMAL",
        ]);
        t.row(["b", "t", "1024", "FIFO"]);
        let s = t.render();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 3);
        // Each header starts where its column starts in every row (left) or ends where
        // it ends (right).
        let col = |l: &str, i: usize| l.match_indices(|c: char| !c.is_whitespace()).count() > i;
        assert!(lines.iter().all(|l| col(l, 0)));
        let topic_at = lines[0].find("TOPIC").unwrap();
        assert_eq!(lines[1].find("a-topic").unwrap(), topic_at);
        assert_eq!(&lines[2][topic_at..topic_at + 1], "t");
        let queues_end = lines[0].find("QUEUES").unwrap() + "QUEUES".len();
        assert_eq!(&lines[1][queues_end - 1..queues_end], "8");
        assert_eq!(&lines[2][queues_end - 4..queues_end], "1024");
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
    }
}
