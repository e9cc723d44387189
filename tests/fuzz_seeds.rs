//! The fuzz targets' readers (`baton::fuzz`) over the seed corpus in `fuzz/corpus/` and a few
//! thousand mutations of each seed (bytes flipped, cut, doubled, spliced): the quick, always-on
//! part of fuzzing. `cargo fuzz` (see README) runs the same readers guided by coverage.

use std::path::Path;

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("workflow", baton::fuzz::workflow),
    ("slack", baton::fuzz::slack),
    ("discord", baton::fuzz::discord),
    ("console", baton::fuzz::console),
];

/// How many mutations of each seed are tried.
const MUTATIONS: usize = 600;

fn seeds(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut out: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .map(|p| std::fs::read(p).unwrap())
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no seeds for {target}");
    out
}

/// A small deterministic generator, so a failure repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that matter to the readers: JSON and TOML punctuation, escapes, surrogates.
const INTERESTING: [&[u8]; 12] = [
    b"\\ud800",
    b"\\u0000",
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"=",
    b"\n[[step]]\n",
    b"{{",
];

fn mutate(seed: &[u8], others: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len() + 1);
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => data.truncate(at),
            2 => {
                let piece = INTERESTING[rng.below(INTERESTING.len())];
                data.splice(at..at, piece.iter().copied());
            }
            3 if !data.is_empty() => {
                let end = (at + rng.below(64)).min(data.len());
                let copy = data[at.min(end)..end].to_vec();
                data.splice(at..at, copy);
            }
            4 => {
                let other = &others[rng.below(others.len())];
                let from = rng.below(other.len());
                data.splice(at.., other[from..].iter().copied());
            }
            _ if !data.is_empty() => {
                let end = (at + rng.below(16)).min(data.len());
                data.drain(at.min(end)..end);
            }
            _ => {}
        }
    }
    data
}

#[test]
fn the_fuzz_readers_take_every_seed_and_thousands_of_mutations_without_panicking() {
    for (name, target) in TARGETS {
        let seeds = seeds(name);
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ name.len() as u64);
        for seed in &seeds {
            target(seed);
            for _ in 0..MUTATIONS {
                let input = mutate(seed, &seeds, &mut rng);
                target(&input);
            }
        }
    }
}
