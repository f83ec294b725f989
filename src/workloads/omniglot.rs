//! Omniglot few-shot classification (Lake et al. 2015), read as users download it.
//!
//! **Data.** The official `images_background.zip` (30 alphabets, 964 characters) and
//! `images_evaluation.zip` (20 alphabets, 659 characters), layout
//! `images_*/<Alphabet>/characterNN/<id>_<drawer>.png`, 20 drawings per character, 105×105
//! 1-bit PNGs (white paper 1, black ink 0). [`Omniglot::load`] reads both zips directly.
//!
//! **Preprocessing.** Invert to ink = 1, then shrink 105×105 → 28×28 with an area (box)
//! filter: each output pixel averages the 3.75×3.75 source pixels it covers, weighting
//! partially covered pixels by their covered area. Because 3.75 = 15/4, every output value is
//! exactly `k/225` for an integer `k ≤ 225`, so the preprocessed set is stored losslessly as
//! one byte per pixel (25 MB). The result is cached in a binary file keyed by the SHA-256 of
//! both zips; later runs read the cache in a fraction of a second.
//!
//! **Order and splits.** Characters are numbered in a fixed order: background first, then
//! evaluation, each by alphabet name, then character folder name (`character01`, …) — i.e.
//! the zips' path order. [`Split::Standard`] (Vinyals et al. 2016, used by MAML and Reptile):
//! the first 1200 characters of that order meta-train, the remaining 423 meta-test.
//! [`Split::Alphabets`] (stricter): background alphabets train, evaluation alphabets test.
//! Every character becomes 4 classes by rotation by 0°, 90°, 180°, 270° (counter-clockwise).
//! Meta-training may add 4 more per character, its mirror image in the same 4 rotations
//! ([`FewShot::with_mirror`], off by default; evaluation classes are always the 4 rotations).

use crate::error::{Error, Result};
use crate::meta::{EvalTasks, Targets, TaskBatch};
use crate::rng::{self, Purpose, Rng};
use crate::spec::MlpSpec;
use rand::Rng as _;
use rand::seq::{SliceRandom, index};
use sha2::{Digest, Sha256};
use std::borrow::Cow;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Side of the preprocessed images.
pub const SIDE: usize = 28;
/// Pixels per preprocessed image (the MLP's input width).
pub const PIXELS: usize = SIDE * SIDE;
/// Drawings per character.
pub const DRAWINGS: usize = 20;
/// Side of the original images.
pub const SOURCE_SIDE: usize = 105;
/// Characters in the standard meta-training split.
pub const STANDARD_TRAIN_CHARS: usize = 1200;
/// The environment variable naming the folder that holds the two zips.
pub const DATA_ENV: &str = "REPTILE_OMNIGLOT_DIR";

const BACKGROUND_ZIP: &str = "images_background.zip";
const EVALUATION_ZIP: &str = "images_evaluation.zip";
const CACHE_MAGIC: &[u8; 8] = b"REPTOMN1";

/// Which zip a character comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Set {
    /// `images_background.zip`.
    Background,
    /// `images_evaluation.zip`.
    Evaluation,
}

/// One character (20 drawings).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Character {
    /// The zip it came from.
    pub set: Set,
    /// Alphabet folder name, e.g. `Japanese_(katakana)`.
    pub alphabet: String,
    /// Character folder name, e.g. `character07`.
    pub name: String,
    /// The global character number of its file names (1..=1623).
    pub id: u32,
}

/// How characters are divided between meta-training and meta-testing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    /// First 1200 characters (in the crate's fixed order) train, the other 423 test.
    Standard,
    /// Background alphabets train, evaluation alphabets test.
    Alphabets,
}

/// The preprocessed data set: every character's 20 drawings at 28×28, values `k/225`.
#[derive(Clone, Debug)]
pub struct Omniglot {
    chars: Vec<Character>,
    /// `[char][drawing][PIXELS]`, each byte `k` meaning ink coverage `k/225`.
    pixels: Vec<u8>,
}

impl Omniglot {
    /// The folder holding the zips: `$REPTILE_OMNIGLOT_DIR` if set, else `../shared/data/omniglot`
    /// next to the crate. `None` when neither holds both zips.
    pub fn find_data_dir() -> Option<PathBuf> {
        let candidates = [
            std::env::var_os(DATA_ENV).map(PathBuf::from),
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/omniglot")),
        ];
        candidates.into_iter().flatten().find(|d| d.join(BACKGROUND_ZIP).is_file() && d.join(EVALUATION_ZIP).is_file())
    }

    /// Loads both zips from `dir`, through the cache file `cache` when given: a cache whose
    /// key matches the zips' SHA-256 is read instead of the zips; otherwise the zips are decoded
    /// and the cache (re)written. A missing, truncated or foreign zip is an error naming it.
    pub fn load(dir: &Path, cache: Option<&Path>) -> Result<Self> {
        let (bg, ev) = (dir.join(BACKGROUND_ZIP), dir.join(EVALUATION_ZIP));
        let bg_bytes = std::fs::read(&bg).map_err(|e| Error::io(&bg, e))?;
        let ev_bytes = std::fs::read(&ev).map_err(|e| Error::io(&ev, e))?;
        let key: Vec<u8> = [Sha256::digest(&bg_bytes), Sha256::digest(&ev_bytes)].concat();
        if let Some(c) = cache
            && let Ok(bytes) = std::fs::read(c)
            && let Ok(data) = Self::from_cache(&bytes, &key)
        {
            return Ok(data);
        }
        let mut data = Omniglot { chars: Vec::new(), pixels: Vec::new() };
        data.read_zip(&bg_bytes, &bg, Set::Background)?;
        data.read_zip(&ev_bytes, &ev, Set::Evaluation)?;
        if let Some(c) = cache {
            data.write_cache(c, &key)?;
        }
        Ok(data)
    }

    /// All characters in the crate's fixed order.
    pub fn characters(&self) -> &[Character] {
        &self.chars
    }

    /// Number of characters.
    pub fn num_characters(&self) -> usize {
        self.chars.len()
    }

    /// Raw bytes (`k` for value `k/225`) of one drawing, `[28 × 28]` row-major.
    pub fn image_bytes(&self, character: usize, drawing: usize) -> &[u8] {
        &self.pixels[(character * DRAWINGS + drawing) * PIXELS..][..PIXELS]
    }

    /// One drawing rotated counter-clockwise by `orientation`·90°, as values in [0, 1].
    /// Orientations 4–7 are the drawing mirrored left to right, then rotated by
    /// `(orientation − 4)`·90° (the 8 symmetries of the square; see [`rotate`]).
    pub fn image(&self, character: usize, drawing: usize, orientation: u8, out: &mut [f32]) {
        let src = self.image_bytes(character, drawing);
        let table = &rotation_tables()[(orientation % 8) as usize];
        // Gather the bytes first, then convert in a loop the compiler vectorizes.
        let mut bytes = [0u8; PIXELS];
        for (b, &j) in bytes.iter_mut().zip(table.iter()) {
            *b = src[j as usize];
        }
        for (o, &b) in out[..PIXELS].iter_mut().zip(bytes.iter()) {
            *o = b as f32 * (1.0 / 225.0);
        }
    }

    /// Character indices of the meta-training and meta-testing halves of `split`.
    pub fn split(&self, split: Split) -> (Vec<usize>, Vec<usize>) {
        let all = 0..self.chars.len();
        match split {
            Split::Standard => {
                let cut = STANDARD_TRAIN_CHARS.min(self.chars.len());
                ((0..cut).collect(), (cut..self.chars.len()).collect())
            }
            Split::Alphabets => all.partition(|&c| self.chars[c].set == Set::Background),
        }
    }

    fn read_zip(&mut self, bytes: &[u8], path: &Path, set: Set) -> Result<()> {
        let bad = |r: String| Error::format(Some(path), r);
        let mut zip =
            zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad(format!("not a zip archive: {e}")))?;
        // (alphabet, character folder, drawer) → entry index, sorted into the fixed order.
        let mut entries = Vec::new();
        for i in 0..zip.len() {
            let name = match zip.name_for_index(i) {
                Some(Ok(n)) => n.to_string(),
                Some(Err(e)) => return Err(bad(format!("entry {i}: {e}"))),
                None => continue,
            };
            if !name.ends_with(".png") {
                continue;
            }
            let parts: Vec<&str> = name.split('/').collect();
            let [_, alphabet, character, file] = parts[..] else {
                return Err(bad(format!(
                    "unexpected entry {name:?} (want images_*/<Alphabet>/characterNN/<id>_<drawer>.png)"
                )));
            };
            let stem = file.trim_end_matches(".png");
            let (id, drawer) = stem
                .split_once('_')
                .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
                .ok_or_else(|| bad(format!("file name {file:?} is not <id>_<drawer>.png")))?;
            entries.push((alphabet.to_string(), character.to_string(), drawer, id, i));
        }
        entries.sort();
        if entries.is_empty() || entries.len() % DRAWINGS != 0 {
            return Err(bad(format!("{} drawings, not a positive multiple of {DRAWINGS}", entries.len())));
        }
        let mut png_bytes = Vec::new();
        for group in entries.chunks(DRAWINGS) {
            let (alphabet, name, _, id, _) = &group[0];
            if group.iter().any(|e| &e.0 != alphabet || &e.1 != name || e.3 != *id) {
                return Err(bad(format!("{alphabet}/{name} does not hold exactly {DRAWINGS} drawings")));
            }
            for (alphabet, name, _, _, index) in group {
                let mut f = zip.by_index(*index).map_err(|e| bad(format!("entry {index}: {e}")))?;
                png_bytes.clear();
                f.read_to_end(&mut png_bytes).map_err(|e| bad(format!("{alphabet}/{name}: {e}")))?;
                let ink = decode_ink(&png_bytes).map_err(|r| bad(format!("{alphabet}/{name}: {r}")))?;
                self.pixels.extend_from_slice(&downsample(&ink));
            }
            self.chars.push(Character { set, alphabet: alphabet.clone(), name: name.clone(), id: *id });
        }
        Ok(())
    }

    fn write_cache(&self, path: &Path, key: &[u8]) -> Result<()> {
        let mut b = Vec::with_capacity(self.pixels.len() + 64 * self.chars.len() + 128);
        b.extend_from_slice(CACHE_MAGIC);
        b.extend_from_slice(key);
        b.extend_from_slice(&(self.chars.len() as u32).to_le_bytes());
        for c in &self.chars {
            b.push(matches!(c.set, Set::Evaluation) as u8);
            b.extend_from_slice(&c.id.to_le_bytes());
            for s in [&c.alphabet, &c.name] {
                b.extend_from_slice(&(s.len() as u16).to_le_bytes());
                b.extend_from_slice(s.as_bytes());
            }
        }
        b.extend_from_slice(&self.pixels);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, &b).map_err(|e| Error::io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
    }

    fn from_cache(b: &[u8], key: &[u8]) -> std::result::Result<Self, String> {
        let mut r = b;
        let mut take = |n: usize| -> std::result::Result<&[u8], String> {
            if r.len() < n {
                return Err("truncated".into());
            }
            let (h, t) = r.split_at(n);
            r = t;
            Ok(h)
        };
        if take(8)? != CACHE_MAGIC || take(key.len())? != key {
            return Err("foreign or stale cache".into());
        }
        let n = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
        let mut chars = Vec::with_capacity(n.min(4096));
        for _ in 0..n {
            let set = if take(1)?[0] == 0 { Set::Background } else { Set::Evaluation };
            let id = u32::from_le_bytes(take(4)?.try_into().unwrap());
            let mut s = [String::new(), String::new()];
            for v in &mut s {
                let len = u16::from_le_bytes(take(2)?.try_into().unwrap()) as usize;
                *v = String::from_utf8(take(len)?.to_vec()).map_err(|e| e.to_string())?;
            }
            let [alphabet, name] = s;
            chars.push(Character { set, alphabet, name, id });
        }
        let pixels = take(n * DRAWINGS * PIXELS)?.to_vec();
        if !r.is_empty() || pixels.iter().any(|&p| p > 225) {
            return Err("bad cache payload".into());
        }
        Ok(Omniglot { chars, pixels })
    }
}

/// Decodes a 105×105 PNG into ink coverage (1 where the pixel is black).
fn decode_ink(png_bytes: &[u8]) -> std::result::Result<Vec<u8>, String> {
    let mut dec = png::Decoder::new(std::io::Cursor::new(png_bytes));
    dec.set_transformations(png::Transformations::EXPAND);
    let mut reader = dec.read_info().map_err(|e| format!("bad PNG: {e}"))?;
    let mut buf = vec![0u8; reader.output_buffer_size().ok_or("PNG too large")?];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("bad PNG data: {e}"))?;
    if info.width as usize != SOURCE_SIDE || info.height as usize != SOURCE_SIDE {
        return Err(format!("image is {}×{}, expected {SOURCE_SIDE}×{SOURCE_SIDE}", info.width, info.height));
    }
    let channels = info.color_type.samples();
    let line = info.line_size;
    let mut ink = vec![0u8; SOURCE_SIDE * SOURCE_SIDE];
    for y in 0..SOURCE_SIDE {
        for x in 0..SOURCE_SIDE {
            // First sample of the pixel (gray, or red); after EXPAND, 8- or 16-bit.
            let v = match info.bit_depth {
                png::BitDepth::Sixteen => buf[y * line + 2 * channels * x],
                _ => buf[y * line + channels * x],
            };
            ink[y * SOURCE_SIDE + x] = (v < 128) as u8;
        }
    }
    Ok(ink)
}

/// Area (box) filter 105×105 → 28×28 in exact integers: returns `k` with value `k/225`.
///
/// In quarter-pixel units the output pixel `t` covers `[15t, 15t + 15)` and the source pixel
/// `j` covers `[4j, 4j + 4)`; their overlaps (0..=4 quarters per axis) multiply to the covered
/// area in sixteenths, and a full output pixel is 15·15 = 225 sixteenths.
pub fn downsample(ink: &[u8]) -> [u8; PIXELS] {
    assert_eq!(ink.len(), SOURCE_SIDE * SOURCE_SIDE, "source image size");
    let overlap = |t: usize, j: usize| -> u32 {
        let (a, b) = (15 * t, 15 * t + 15);
        let (c, d) = (4 * j, 4 * j + 4);
        b.min(d).saturating_sub(a.max(c)) as u32
    };
    let mut out = [0u8; PIXELS];
    for ty in 0..SIDE {
        let ys = (15 * ty) / 4..((15 * ty + 15).div_ceil(4)).min(SOURCE_SIDE);
        for tx in 0..SIDE {
            let xs = (15 * tx) / 4..((15 * tx + 15).div_ceil(4)).min(SOURCE_SIDE);
            let mut k = 0u32;
            for y in ys.clone() {
                let wy = overlap(ty, y);
                for x in xs.clone() {
                    k += wy * overlap(tx, x) * ink[y * SOURCE_SIDE + x] as u32;
                }
            }
            out[ty * SIDE + tx] = k as u8;
        }
    }
    out
}

/// The source pixel `(y, x)` shown at output `(r, c)` after `q % 4` counter-clockwise quarter
/// turns of the drawing, mirrored left to right first when `q % 8 ≥ 4`.
fn rotated_source(r: usize, c: usize, q: u8) -> (usize, usize) {
    let n = SIDE - 1;
    let (y, x) = match q % 4 {
        0 => (r, c),
        1 => (c, n - r),
        2 => (n - r, n - c),
        _ => (n - c, r),
    };
    if q % 8 >= 4 { (y, n - x) } else { (y, x) }
}

/// For each orientation (quarter turns, plus 4 when mirrored), the source index shown at
/// every output pixel.
fn rotation_tables() -> &'static [[u16; PIXELS]; 8] {
    static T: std::sync::OnceLock<[[u16; PIXELS]; 8]> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        std::array::from_fn(|q| {
            std::array::from_fn(|i| {
                let (y, x) = rotated_source(i / SIDE, i % SIDE, q as u8);
                (y * SIDE + x) as u16
            })
        })
    })
}

/// Rotates a 28×28 image counter-clockwise by `q`·90°; for `q % 8` in 4–7, mirrors it left
/// to right first and then rotates it by `(q − 4)`·90°.
pub fn rotate(src: &[f32], q: u8, out: &mut [f32]) {
    for (i, o) in out[..PIXELS].iter_mut().enumerate() {
        let (y, x) = rotated_source(i / SIDE, i % SIDE, q);
        *o = src[y * SIDE + x];
    }
}

/// N-way K-shot task sampler over a set of characters, each in 4 rotations (classes), or
/// in 8 orientations with [`FewShot::with_mirror`].
#[derive(Clone, Debug)]
pub struct FewShot<'d> {
    data: &'d Omniglot,
    /// The characters drawn from, as given.
    characters: Vec<usize>,
    /// (character, orientation: quarter turns, plus 4 when mirrored).
    classes: Vec<(usize, u8)>,
    rng: Rng,
    /// Largest random translation (pixels, each axis) applied to every sampled drawing.
    shift: usize,
    /// Largest random rotation (radians, either way) and relative scale change applied to
    /// every sampled drawing before the translation.
    rotate: f32,
    scale: f32,
}

/// Every character in orientations `0..per`, character by character.
fn orientations(characters: &[usize], per: u8) -> Vec<(usize, u8)> {
    characters.iter().flat_map(|&c| (0..per).map(move |q| (c, q))).collect()
}

/// Sampled tasks: per task, the classes drawn (character index, orientation) in label order.
pub type TaskClasses = Vec<Vec<(usize, u8)>>;

impl<'d> FewShot<'d> {
    /// A sampler over `characters` (indices into `data`), all four rotations of each, seeded.
    pub fn new(data: &'d Omniglot, characters: &[usize], seed: u64) -> Result<Self> {
        if let Some(&c) = characters.iter().find(|&&c| c >= data.num_characters()) {
            return Err(Error::InvalidArgument(format!("character {c} out of range 0..{}", data.num_characters())));
        }
        let classes = orientations(characters, 4);
        Ok(FewShot {
            data,
            characters: characters.to_vec(),
            classes,
            rng: rng::stream(seed, Purpose::Tasks, 1),
            shift: 0,
            rotate: 0.0,
            scale: 0.0,
        })
    }

    /// Adds the mirror image (left to right) of every character, in the same 4 rotations, as
    /// 4 more classes: 8 classes per character, orientations `0..8` of [`Omniglot::image`].
    /// A task-level augmentation for meta-training (a mirrored character is a new class,
    /// never the same one), so the sampler has twice the classes to draw tasks from.
    /// `false` (the default) keeps the protocol's 4 rotations; the order of the classes is
    /// then unchanged, and so are the tasks drawn for a seed.
    pub fn with_mirror(mut self, mirror: bool) -> Self {
        self.classes = orientations(&self.characters, if mirror { 8 } else { 4 });
        self
    }

    /// Translates every drawing this sampler returns by a random offset in `−max..=max`
    /// pixels on each axis (zero fill), a data augmentation for meta-training. `0` (the
    /// default) leaves drawings as they are and draws no random numbers for it.
    pub fn with_shift(mut self, max: usize) -> Result<Self> {
        if max >= SIDE {
            return Err(Error::InvalidArgument(format!("shift {max} must be below the image side {SIDE}")));
        }
        self.shift = max;
        Ok(self)
    }

    /// Rotates every drawing this sampler returns by a random angle in `±degrees` and scales it
    /// by a random factor in `1 ± scale` about the image centre (bilinear, zero fill), before
    /// any translation: a data augmentation for meta-training. `0, 0` (the default) leaves
    /// drawings as they are and draws no random numbers for it.
    pub fn with_affine(mut self, degrees: f32, scale: f32) -> Result<Self> {
        if !(0.0..=45.0).contains(&degrees) || !(0.0..0.5).contains(&scale) {
            return Err(Error::InvalidArgument(format!(
                "affine augmentation needs 0 ≤ degrees ≤ 45 and 0 ≤ scale < 0.5, got {degrees} and {scale}"
            )));
        }
        self.rotate = degrees.to_radians();
        self.scale = scale;
        Ok(self)
    }

    /// Number of classes (4 per character, 8 with [`Self::with_mirror`]).
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// `n_tasks` tasks of `ways` distinct classes with labels `0..ways` in random order;
    /// per class `shots` support and `query` query drawings, disjoint, drawn without
    /// replacement from its 20. Support is `[n_tasks × ways·shots × 784]`, query
    /// `[n_tasks × ways·query × 784]` (`query = 0` gives an empty query: use
    /// [`Self::train_batch`]). Also returns each task's classes in label order.
    pub fn sample(
        &mut self,
        spec: &MlpSpec,
        n_tasks: usize,
        ways: usize,
        shots: usize,
        query: usize,
    ) -> Result<(TaskBatch<'static>, Option<TaskBatch<'static>>, TaskClasses)> {
        if ways < 2 || ways > self.classes.len() || ways > spec.out_dim() {
            return Err(Error::InvalidArgument(format!(
                "{ways}-way tasks need 2 ≤ ways ≤ min(classes {}, outputs {})",
                self.classes.len(),
                spec.out_dim()
            )));
        }
        if shots == 0 || shots + query > DRAWINGS {
            return Err(Error::InvalidArgument(format!(
                "shots ({shots}) ≥ 1 and shots + query ({}) ≤ {DRAWINGS} drawings",
                shots + query
            )));
        }
        let (ms, mq) = (ways * shots, ways * query);
        let (mut xs, mut ys) = (vec![0.0f32; n_tasks * ms * PIXELS], Vec::with_capacity(n_tasks * ms));
        let (mut xq, mut yq) = (vec![0.0f32; n_tasks * mq * PIXELS], Vec::with_capacity(n_tasks * mq));
        let mut all = Vec::with_capacity(n_tasks);
        for t in 0..n_tasks {
            let mut picked: Vec<(usize, u8)> =
                index::sample(&mut self.rng, self.classes.len(), ways).into_iter().map(|i| self.classes[i]).collect();
            picked.shuffle(&mut self.rng);
            for (label, &(c, q)) in picked.iter().enumerate() {
                let draws = index::sample(&mut self.rng, DRAWINGS, shots + query).into_vec();
                for (j, &d) in draws.iter().enumerate() {
                    let (buf, lab, row) = if j < shots {
                        (&mut xs, &mut ys, t * ms + label * shots + j)
                    } else {
                        (&mut xq, &mut yq, t * mq + label * query + (j - shots))
                    };
                    let img = &mut buf[row * PIXELS..][..PIXELS];
                    self.data.image(c, d, q, img);
                    if self.rotate > 0.0 || self.scale > 0.0 {
                        let a = if self.rotate > 0.0 { self.rng.random_range(-self.rotate..=self.rotate) } else { 0.0 };
                        let z = if self.scale > 0.0 { self.rng.random_range(-self.scale..=self.scale) } else { 0.0 };
                        rotate_scale(img, a, 1.0 + z);
                    }
                    if self.shift > 0 {
                        let s = self.shift as i32;
                        let (dx, dy) = (self.rng.random_range(-s..=s), self.rng.random_range(-s..=s));
                        translate(img, dx, dy);
                    }
                    lab.push((row, label as u32));
                }
            }
            all.push(picked);
        }
        let ys: Vec<u32> = order_labels(ys, n_tasks * ms);
        let yq: Vec<u32> = order_labels(yq, n_tasks * mq);
        let support = TaskBatch::new(spec, n_tasks, ms, xs, Targets::Labels(Cow::Owned(ys)))?;
        let query = if query > 0 {
            Some(TaskBatch::new(spec, n_tasks, mq, xq, Targets::Labels(Cow::Owned(yq)))?)
        } else {
            None
        };
        Ok((support, query, all))
    }

    /// `n_tasks` training tasks of `ways × shots` labelled drawings each.
    pub fn train_batch(
        &mut self,
        spec: &MlpSpec,
        n_tasks: usize,
        ways: usize,
        shots: usize,
    ) -> Result<TaskBatch<'static>> {
        Ok(self.sample(spec, n_tasks, ways, shots, 0)?.0)
    }

    /// `n_tasks` evaluation tasks: support `ways × shots`, query `ways × query`.
    pub fn eval_tasks(
        &mut self,
        spec: &MlpSpec,
        n_tasks: usize,
        ways: usize,
        shots: usize,
        query: usize,
    ) -> Result<EvalTasks<'static>> {
        if query == 0 {
            return Err(Error::InvalidArgument("evaluation tasks need at least one query drawing per class".into()));
        }
        let (s, q, _) = self.sample(spec, n_tasks, ways, shots, query)?;
        EvalTasks::new(s, q.expect("query > 0"))
    }
}

/// Test-time support augmentation: every support drawing of every task also in all its
/// translations by `−max..=max` pixels per axis (zero fill), with its label, so a K-shot
/// support set of `m` drawings becomes `m·(2·max + 1)²` points per task: the `m` originals
/// first, then all `m` moved by each other offset in row-major order of `(dy, dx)`. Uses only
/// the support set, never the query; the query sets are returned unchanged. `max = 0`
/// returns a copy.
pub fn shifted_support(spec: &MlpSpec, tasks: &EvalTasks<'_>, max: usize) -> Result<EvalTasks<'static>> {
    let support = shifted_copies(spec, tasks.support(), max)?;
    EvalTasks::new(support, tasks.query().clone().into_owned())?.with_query_views(tasks.query_views())
}

/// Test-time query augmentation: every query drawing is scored by the mean prediction of the
/// adapted net over all its translations by `−max..=max` pixels per axis (zero fill), each
/// drawing on its own (no transduction): the query sets become `(2·max + 1)²` view blocks in
/// the layout of [`shifted_support`] and the tasks score them as views
/// ([`EvalTasks::with_query_views`]). The support sets are returned unchanged. The query must
/// not have views already.
pub fn shifted_query(spec: &MlpSpec, tasks: &EvalTasks<'_>, max: usize) -> Result<EvalTasks<'static>> {
    if tasks.query_views() != 1 {
        return Err(Error::InvalidArgument("the query already has views".into()));
    }
    let query = shifted_copies(spec, tasks.query(), max)?;
    EvalTasks::new(tasks.support().clone().into_owned(), query)?.with_query_views((2 * max + 1).pow(2))
}

/// Every drawing of every task of `batch` in all its translations by `−max..=max` pixels per
/// axis, with its label: per task the `m` originals, then all `m` moved by each other offset
/// in row-major order of `(dy, dx)`.
fn shifted_copies(spec: &MlpSpec, batch: &TaskBatch<'_>, max: usize) -> Result<TaskBatch<'static>> {
    if max >= SIDE {
        return Err(Error::InvalidArgument(format!("shift {max} must be below the image side {SIDE}")));
    }
    if spec.in_dim() != PIXELS || batch.x().len() != batch.n_tasks() * batch.n_points() * PIXELS {
        return Err(Error::ShapeMismatch(format!("drawings must be {PIXELS}-pixel images for a {PIXELS}-input net")));
    }
    let Targets::Labels(labels) = batch.y() else {
        return Err(Error::InvalidArgument("shift augmentation needs class labels".into()));
    };
    let (n, m) = (batch.n_tasks(), batch.n_points());
    let s = max as i32;
    let offsets: Vec<(i32, i32)> = std::iter::once((0, 0))
        .chain((-s..=s).flat_map(|dy| (-s..=s).map(move |dx| (dx, dy))).filter(|&o| o != (0, 0)))
        .collect();
    let mm = m * offsets.len();
    let (mut x, mut y) = (Vec::with_capacity(n * mm * PIXELS), Vec::with_capacity(n * mm));
    for t in 0..n {
        for &(dx, dy) in &offsets {
            for p in 0..m {
                let row = t * m + p;
                let start = x.len();
                x.extend_from_slice(&batch.x()[row * PIXELS..][..PIXELS]);
                translate(&mut x[start..], dx, dy);
                y.push(labels[row]);
            }
        }
    }
    TaskBatch::new(spec, n, mm, x, Targets::Labels(Cow::Owned(y)))
}

/// Moves a 28×28 image by `dx` columns and `dy` rows (positive: right, down), filling with 0.
pub fn translate(img: &mut [f32], dx: i32, dy: i32) {
    let src: [f32; PIXELS] = img[..PIXELS].try_into().expect("a 28×28 image");
    let side = SIDE as i32;
    // Row by row: output columns `x0..x1` come from source columns `x0 − dx..x1 − dx` of
    // source row `y − dy`; everything else is 0.
    let (x0, x1) = (dx.clamp(0, side) as usize, (side + dx).clamp(0, side) as usize);
    for (y, row) in img[..PIXELS].chunks_exact_mut(SIDE).enumerate() {
        let sy = y as i32 - dy;
        if !(0..side).contains(&sy) || x0 >= x1 {
            row.fill(0.0);
            continue;
        }
        let s = &src[sy as usize * SIDE..][..SIDE];
        row[..x0].fill(0.0);
        row[x0..x1].copy_from_slice(&s[(x0 as i32 - dx) as usize..(x1 as i32 - dx) as usize]);
        row[x1..].fill(0.0);
    }
}

/// Rotates a 28×28 image by `angle` radians (counter-clockwise as displayed, rows pointing
/// down) and scales it by `scale` about its centre: each output pixel takes the bilinear
/// interpolation of the source at the inverse-mapped position, 0 outside the image.
pub fn rotate_scale(img: &mut [f32], angle: f32, scale: f32) {
    if angle == 0.0 {
        scale_only(img, scale);
    } else {
        rotate_scale_any(img, angle, scale);
    }
}

/// [`rotate_scale`] without a turn, bit for bit: with `angle = 0` the inverse map of column
/// `x` is `(x − c)/scale + c` whatever the row (and likewise for rows), so the 28 source
/// positions are computed once, not per pixel: no sine, cosine or division per pixel. The
/// sampling is the general loop's ([`tap`], [`bilinear`]).
fn scale_only(img: &mut [f32], scale: f32) {
    let src: [f32; PIXELS] = img[..PIXELS].try_into().expect("a 28×28 image");
    let c = (SIDE as f32 - 1.0) / 2.0;
    let taps: [(i32, f32); SIDE] = std::array::from_fn(|i| tap((i as f32 - c) / scale + c));
    for (y, &(y0, fy)) in taps.iter().enumerate() {
        for (x, &(x0, fx)) in taps.iter().enumerate() {
            img[y * SIDE + x] = bilinear(&src, y0, x0, fy, fx);
        }
    }
}

/// [`rotate_scale`] for any angle.
fn rotate_scale_any(img: &mut [f32], angle: f32, scale: f32) {
    let src: [f32; PIXELS] = img[..PIXELS].try_into().expect("a 28×28 image");
    let c = (SIDE as f32 - 1.0) / 2.0;
    let (sin, cos) = angle.sin_cos();
    for y in 0..SIDE {
        for x in 0..SIDE {
            let (u, v) = (x as f32 - c, y as f32 - c);
            // Inverse map: rotate back by −angle, shrink by 1/scale. With rows pointing down, a
            // counter-clockwise turn on screen is (u, v) → (u·cos + v·sin, −u·sin + v·cos).
            let (x0, fx) = tap((u * cos - v * sin) / scale + c);
            let (y0, fy) = tap((u * sin + v * cos) / scale + c);
            img[y * SIDE + x] = bilinear(&src, y0, x0, fy, fx);
        }
    }
}

/// A source coordinate as its whole pixel and the fraction past it.
#[inline(always)]
fn tap(s: f32) -> (i32, f32) {
    let s0 = s.floor();
    (s0 as i32, s - s0)
}

/// Bilinear interpolation of `src` at row `y0 + fy`, column `x0 + fx`; pixels outside the
/// image count as 0.
#[inline(always)]
fn bilinear(src: &[f32; PIXELS], y0: i32, x0: i32, fy: f32, fx: f32) -> f32 {
    let at = |y: i32, x: i32| -> f32 {
        if (0..SIDE as i32).contains(&y) && (0..SIDE as i32).contains(&x) {
            src[y as usize * SIDE + x as usize]
        } else {
            0.0
        }
    };
    let top = at(y0, x0) * (1.0 - fx) + at(y0, x0 + 1) * fx;
    let bottom = at(y0 + 1, x0) * (1.0 - fx) + at(y0 + 1, x0 + 1) * fx;
    top * (1.0 - fy) + bottom * fy
}

/// Places `(row, label)` pairs into a label vector indexed by row.
fn order_labels(pairs: Vec<(usize, u32)>, rows: usize) -> Vec<u32> {
    let mut out = vec![0u32; rows];
    for (row, label) in pairs {
        out[row] = label;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The turn-free fast path is the general resampling bit for bit, on random drawings and
    /// scales (including ones that shrink the drawing and ones that push ink off the edges).
    #[test]
    fn scale_only_is_rotate_scale_at_angle_zero() {
        let mut state = 0x2545_f491_4f6c_dd1du64 ^ std::process::id() as u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 40) as f32 / (1u64 << 24) as f32
        };
        for _ in 0..200 {
            let img: Vec<f32> = (0..PIXELS).map(|_| next()).collect();
            let scale = 0.5 + next();
            let (mut fast, mut general) = (img.clone(), img.clone());
            scale_only(&mut fast, scale);
            rotate_scale_any(&mut general, 0.0, scale);
            for (i, (a, b)) in fast.iter().zip(&general).enumerate() {
                assert_eq!(a.to_bits(), b.to_bits(), "scale {scale}, pixel {i}: {a} vs {b}");
            }
            assert!(fast != img, "the resampling changed the drawing (scale {scale})");
        }
    }
}
