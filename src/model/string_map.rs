//! [`StringMap`]: a run's params or tags, sorted by key and packed into one
//! allocation. A catalog keeps one pair of these for every run it has ever
//! seen, so their size is most of a finished run's resident cost: a
//! `BTreeMap<String, String>` of three params takes about 650 bytes (a
//! node of eleven slots and a heap string per key and value), the same
//! map packed here about 80.

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Bytes of one offset in the packed buffer.
const OFFSET_BYTES: usize = 4;

/// String keys and values, sorted by key, each key once.
///
/// The buffer holds the entry count, then for each entry the end of its
/// key and the end of its value (relative to the text that follows, as
/// little-endian `u32`s), then every key and value one after the other.
/// Lookups are binary searches; an insert or a removal rebuilds the
/// buffer, which suits maps of tens to hundreds of entries changed a few
/// times in a run's life. Serialized as a map, exactly as a
/// `BTreeMap<String, String>` is, so stored catalogs read either way.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct StringMap {
    /// Empty for an empty map.
    packed: Box<[u8]>,
}

impl StringMap {
    /// An empty map.
    pub fn new() -> Self {
        StringMap::default()
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        if self.packed.is_empty() {
            return 0;
        }
        read_u32(&self.packed, 0) as usize
    }

    /// Whether the map has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.position(key).ok().map(|index| self.entry(index).1)
    }

    /// Whether `key` has a value.
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }

    /// Sets `key` to `value`, returning whether it had a value before.
    pub fn insert(&mut self, key: &str, value: &str) -> bool {
        let position = self.position(key);
        let replaced = position.is_ok();
        let mut entries: Vec<(&str, &str)> = self.iter().collect();
        match position {
            Ok(index) => entries[index].1 = value,
            Err(index) => entries.insert(index, (key, value)),
        }
        self.packed = pack(&entries);
        replaced
    }

    /// Removes `key`, returning whether it had a value.
    pub fn remove(&mut self, key: &str) -> bool {
        let Ok(index) = self.position(key) else {
            return false;
        };
        let mut entries: Vec<(&str, &str)> = self.iter().collect();
        entries.remove(index);
        self.packed = pack(&entries);
        true
    }

    /// Sets every pair of `pairs`, later pairs winning over earlier ones
    /// and over the map's values.
    pub fn extend<K: AsRef<str>, V: AsRef<str>>(
        &mut self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) {
        let pairs: Vec<(K, V)> = pairs.into_iter().collect();
        if pairs.is_empty() {
            return;
        }
        let mut entries: Vec<(&str, &str)> = self.iter().collect();
        entries.extend(
            pairs
                .iter()
                .map(|(key, value)| (key.as_ref(), value.as_ref())),
        );
        self.packed = pack(&sorted_last_wins(entries));
    }

    /// The entries in key order.
    pub fn iter(&self) -> Iter<'_> {
        Iter {
            map: self,
            next: 0,
            end: self.len(),
        }
    }

    /// The keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.iter().map(|(key, _)| key)
    }

    /// Heap bytes the map takes (its one buffer).
    pub fn heap_bytes(&self) -> usize {
        self.packed.len()
    }

    /// Entry `index`'s key and value.
    fn entry(&self, index: usize) -> (&str, &str) {
        let count = self.len();
        let text_start = OFFSET_BYTES * (1 + 2 * count);
        let key_start = match index {
            0 => 0,
            _ => read_u32(&self.packed, OFFSET_BYTES * (2 * index)) as usize,
        };
        let key_end = read_u32(&self.packed, OFFSET_BYTES * (1 + 2 * index)) as usize;
        let value_end = read_u32(&self.packed, OFFSET_BYTES * (2 + 2 * index)) as usize;
        let text = &self.packed[text_start..];
        (
            text_at(text, key_start, key_end),
            text_at(text, key_end, value_end),
        )
    }

    /// Where `key` is (`Ok`) or would go (`Err`).
    fn position(&self, key: &str) -> Result<usize, usize> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = low + (high - low) / 2;
            match self.entry(middle).0.cmp(key) {
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
                std::cmp::Ordering::Equal => return Ok(middle),
            }
        }
        Err(low)
    }
}

/// The text between two offsets of a buffer this module packed: always a
/// whole string, since both offsets are ends of strings it wrote.
fn text_at(text: &[u8], start: usize, end: usize) -> &str {
    // The buffer is only ever built by `pack` from `&str`s, so the range
    // is valid UTF-8 on character boundaries; an empty string is the
    // answer for a buffer that is somehow not (never a panic).
    text.get(start..end)
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .unwrap_or_default()
}

fn read_u32(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; OFFSET_BYTES];
    if let Some(slice) = bytes.get(at..at + OFFSET_BYTES) {
        word.copy_from_slice(slice);
    }
    u32::from_le_bytes(word)
}

/// Packs entries sorted by key, each key once.
fn pack(entries: &[(&str, &str)]) -> Box<[u8]> {
    if entries.is_empty() {
        return Box::default();
    }
    let text: usize = entries
        .iter()
        .map(|(key, value)| key.len() + value.len())
        .sum();
    let mut packed = Vec::with_capacity(OFFSET_BYTES * (1 + 2 * entries.len()) + text);
    packed.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    let mut end = 0usize;
    for (key, value) in entries {
        end += key.len();
        packed.extend_from_slice(&(end as u32).to_le_bytes());
        end += value.len();
        packed.extend_from_slice(&(end as u32).to_le_bytes());
    }
    for (key, value) in entries {
        packed.extend_from_slice(key.as_bytes());
        packed.extend_from_slice(value.as_bytes());
    }
    packed.into_boxed_slice()
}

/// Sorts pairs by key, keeping the last value given for each key.
fn sorted_last_wins<'a>(mut entries: Vec<(&'a str, &'a str)>) -> Vec<(&'a str, &'a str)> {
    // A stable sort keeps pairs of one key in the order given.
    entries.sort_by(|left, right| left.0.cmp(right.0));
    let mut kept: Vec<(&str, &str)> = Vec::with_capacity(entries.len());
    for entry in entries {
        match kept.last_mut() {
            Some(last) if last.0 == entry.0 => *last = entry,
            _ => kept.push(entry),
        }
    }
    kept
}

/// The entries of a [`StringMap`] in key order.
pub struct Iter<'a> {
    map: &'a StringMap,
    next: usize,
    end: usize,
}

impl<'a> Iterator for Iter<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        let entry = self.map.entry(self.next);
        self.next += 1;
        Some(entry)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.end - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for Iter<'_> {}

impl DoubleEndedIterator for Iter<'_> {
    fn next_back(&mut self) -> Option<Self::Item> {
        if self.next >= self.end {
            return None;
        }
        self.end -= 1;
        Some(self.map.entry(self.end))
    }
}

impl<'a> IntoIterator for &'a StringMap {
    type Item = (&'a str, &'a str);
    type IntoIter = Iter<'a>;

    fn into_iter(self) -> Iter<'a> {
        self.iter()
    }
}

impl<K: AsRef<str>, V: AsRef<str>> FromIterator<(K, V)> for StringMap {
    /// The map of `pairs`; of pairs with one key, the last wins.
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        let mut map = StringMap::new();
        map.extend(pairs);
        map
    }
}

impl<const N: usize> From<[(&str, &str); N]> for StringMap {
    fn from(pairs: [(&str, &str); N]) -> Self {
        pairs.into_iter().collect()
    }
}

impl std::ops::Index<&str> for StringMap {
    type Output = str;

    /// The value of `key`; panics when there is none, like a `BTreeMap`
    /// (for tests and for keys known to be there).
    fn index(&self, key: &str) -> &str {
        match self.get(key) {
            Some(value) => value,
            None => panic!("no entry for key {key:?}"),
        }
    }
}

impl fmt::Debug for StringMap {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.debug_map().entries(self.iter()).finish()
    }
}

impl Serialize for StringMap {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.len()))?;
        for (key, value) in self.iter() {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct MapVisitor;

        impl<'de> Visitor<'de> for MapVisitor {
            type Value = StringMap;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("a map of strings to strings")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<StringMap, A::Error> {
                let mut pairs: Vec<(String, String)> =
                    Vec::with_capacity(access.size_hint().unwrap_or(0).min(4096));
                while let Some(pair) = access.next_entry::<String, String>()? {
                    pairs.push(pair);
                }
                Ok(pairs.into_iter().collect())
            }
        }

        deserializer.deserialize_map(MapVisitor)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn reference(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    fn as_btree(map: &StringMap) -> BTreeMap<String, String> {
        map.iter()
            .map(|(key, value)| (key.to_string(), value.to_string()))
            .collect()
    }

    #[test]
    fn behaves_as_a_sorted_map_through_inserts_and_removals() {
        let mut map = StringMap::new();
        let mut expected = BTreeMap::new();
        assert!(map.is_empty());
        assert_eq!(map.get("a"), None);
        let keys = ["lr", "seed", "", "batch_size", "ünï", "lr", "z", "a.b"];
        for (round, key) in keys.iter().enumerate() {
            let value = format!("value-{round}");
            let had = map.insert(key, &value);
            assert_eq!(had, expected.insert(key.to_string(), value).is_some());
            assert_eq!(as_btree(&map), expected);
        }
        assert_eq!(map.len(), expected.len());
        assert_eq!(map.get("lr"), Some("value-5"), "the later insert wins");
        assert_eq!(map.get(""), Some("value-2"), "an empty key is a key");
        assert!(!map.contains_key("missing"));
        assert!(map.remove("seed"));
        assert!(!map.remove("seed"));
        expected.remove("seed");
        assert_eq!(as_btree(&map), expected);
        let reversed: Vec<&str> = map.iter().rev().map(|(key, _)| key).collect();
        let mut sorted: Vec<&str> = expected.keys().map(String::as_str).collect();
        sorted.reverse();
        assert_eq!(reversed, sorted);
        for key in expected.keys().cloned().collect::<Vec<_>>() {
            assert!(map.remove(&key));
        }
        assert!(map.is_empty());
        assert_eq!(map.heap_bytes(), 0, "an empty map holds no buffer");
    }

    #[test]
    fn collecting_and_extending_keep_the_last_value_of_a_key() {
        let map: StringMap = [("b", "1"), ("a", "2"), ("b", "3")].into();
        assert_eq!(as_btree(&map), reference(&[("a", "2"), ("b", "3")]));
        let mut map = map;
        map.extend([("a", "4"), ("c", "5")]);
        assert_eq!(
            as_btree(&map),
            reference(&[("a", "4"), ("b", "3"), ("c", "5")])
        );
        map.extend(Vec::<(String, String)>::new());
        assert_eq!(map.len(), 3);
        assert_eq!(&map["c"], "5");
    }

    #[test]
    fn serializes_exactly_as_a_btree_map() {
        let pairs = [("lr", "0.01"), ("batch_size", "64"), ("seed", "7")];
        let map: StringMap = pairs.into();
        let btree = reference(&pairs);
        let config = bincode::config::standard();
        let ours = bincode::serde::encode_to_vec(&map, config).unwrap();
        let theirs = bincode::serde::encode_to_vec(&btree, config).unwrap();
        assert_eq!(ours, theirs);
        let (back, _): (StringMap, usize) =
            bincode::serde::decode_from_slice(&theirs, config).unwrap();
        assert_eq!(back, map);
        assert_eq!(
            serde_json::to_string(&map).unwrap(),
            serde_json::to_string(&btree).unwrap()
        );
        let from_json: StringMap = serde_json::from_str(r#"{"b":"2","a":"1"}"#).unwrap();
        assert_eq!(as_btree(&from_json), reference(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn is_far_smaller_than_a_btree_map() {
        let map: StringMap = [("lr", "0.01"), ("batch_size", "64"), ("seed", "7")].into();
        // Count, six ends, then the text.
        assert_eq!(
            map.heap_bytes(),
            4 + 6 * 4 + "lr0.01batch_size64seed7".len()
        );
        assert_eq!(std::mem::size_of::<StringMap>(), 16);
    }
}
