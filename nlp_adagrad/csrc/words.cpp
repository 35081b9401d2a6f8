// Word-level tokenizing of plain text, as the `tokenizers` pipeline nlp_adagrad.vocab builds
// does it: NFKC, optional lowercase, the Whitespace pre-tokenizer (`\w+|[^\w\s]+`: runs of
// word characters, runs of other non-space characters) and the WordLevel lookup. "Plain" is
// ASCII plus a few dozen symbols and punctuation marks of everyday text (kSymbols: the pound
// and euro signs, curly quotes, dashes, ...), each of which NFKC and lowercase leave alone and
// the pre-tokenizer counts as "other". Any other text is left to `tokenizers` (its index comes
// back), so the output is the same for every text (tested against tokenizers on BBC News, the
// synthetic corpus and text built to trip it). Why C++: tokenizers ran at ~3 M tokens/s here,
// longer than fastText's whole training on the synthetic corpus.
//
// On ASCII, \w is [A-Za-z0-9_] and \s is \t \n \v \f \r and space (Unicode's White_Space:
// not 0x1c-0x1f, which are "other" like punctuation).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "rows.h"

#ifdef __AVX2__
#include <immintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <numeric>
#include <string>
#include <string_view>
#include <vector>

namespace {

enum Kind : unsigned char { kSpace, kWord, kOther };

struct Table {  // bytes from 128 up come only from kSymbols (is_plain): all "other"
  Kind kind[256];
  Table() {
    for (int c = 0; c < 256; ++c) {
      const bool word = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '_';
      const bool space = c == ' ' || (c >= 9 && c <= 13);
      kind[c] = word ? kWord : space ? kSpace : kOther;
    }
  }
};
const Table kTable;

// Arrow string arrays as the kernels read them (nlp_adagrad.vocab._arrow_texts): text t is
// data[starts[t]:ends[t]], no Python string made (a null text reads as empty).
struct Texts {
  const char* data;
  const int64_t* starts;
  const int64_t* ends;
  int64_t count;
  std::string_view operator[](int64_t t) const {
    return std::string_view(data + starts[t], (size_t)(ends[t] - starts[t]));
  }
  // A guess at the tokens of texts [begin, end), for reserving: one per 4 bytes of the span
  // they lie in (the synthetic corpus's words take 4.7 bytes with their space, English more).
  // A vector grown by doubling instead copied itself and faulted in every page twice.
  size_t expected_tokens(int64_t begin, int64_t end) const {
    return begin < end ? (size_t)std::max<int64_t>(0, ends[end - 1] - starts[begin]) / 4 : 0;
  }
};

Texts texts_of(const pybind11::buffer_info& data, const torch::Tensor& starts,
               const torch::Tensor& ends) {
  TORCH_CHECK(starts.scalar_type() == torch::kInt64 && ends.scalar_type() == torch::kInt64 &&
                  starts.is_contiguous() && ends.is_contiguous() && starts.numel() == ends.numel(),
              "texts: contiguous int64 starts and ends, one each per text");
  return {static_cast<const char*>(data.ptr), starts.data_ptr<int64_t>(), ends.data_ptr<int64_t>(),
          starts.numel()};
}

// The non-ASCII characters a plain text may hold, sorted: symbols and punctuation (Unicode
// categories S and P, not Pc) that NFKC maps to themselves and that have no case, so neither
// normalizer changes their bytes and the pre-tokenizer's "other" class holds them (the list is
// checked against unicodedata, and texts holding each against tokenizers, in the tests).
constexpr uint32_t kSymbols[] = {
    0xa1,   0xa2,   0xa3,   0xa4,   0xa5,   0xa6,   0xa7,   0xa9,   0xab,   0xac,   0xae,
    0xb0,   0xb1,   0xb6,   0xb7,   0xbb,   0xbf,   0xd7,   0xf7,   0x2010, 0x2012, 0x2013,
    0x2014, 0x2015, 0x2016, 0x2018, 0x2019, 0x201a, 0x201b, 0x201c, 0x201d, 0x201e, 0x201f,
    0x2020, 0x2021, 0x2022, 0x2023, 0x2027, 0x2030, 0x2032, 0x2039, 0x203a, 0x20ac};

// Whether the kernels tokenize `text` themselves: ASCII, or ASCII and kSymbols (UTF-8).
bool is_plain(std::string_view text) {
  unsigned char high = 0;
  for (unsigned char c : text) high |= c;  // vectorises; the common case ends here
  if (high < 128) return true;
  const auto* b = reinterpret_cast<const unsigned char*>(text.data());
  for (size_t i = 0, n = text.size(); i < n;) {
    if (b[i] < 128) { ++i; continue; }
    uint32_t cp;
    size_t length;
    if ((b[i] & 0xe0) == 0xc0 && i + 1 < n && (b[i + 1] & 0xc0) == 0x80) {
      cp = ((b[i] & 0x1fu) << 6) | (b[i + 1] & 0x3fu), length = 2;
    } else if ((b[i] & 0xf0) == 0xe0 && i + 2 < n && (b[i + 1] & 0xc0) == 0x80 &&
               (b[i + 2] & 0xc0) == 0x80) {
      cp = ((b[i] & 0x0fu) << 12) | ((b[i + 1] & 0x3fu) << 6) | (b[i + 2] & 0x3fu), length = 3;
    } else {
      return false;
    }
    if (!std::binary_search(std::begin(kSymbols), std::end(kSymbols), cp)) return false;
    i += length;
  }
  return true;
}

// Texts [0, count) cut into one contiguous range per torch thread (from 500 texts a range):
// fn(range, begin, end) for each, the ranges in parallel; returns the range count. Each range
// writes only its own results, which the caller joins in range order: the same output for
// any thread count.
template <typename Fn>
int64_t over_ranges(int64_t count, Fn fn) {
  const int64_t ranges =
      std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), count / 500));
  at::parallel_for(0, ranges, 1, [&](int64_t first, int64_t last) {
    for (int64_t r = first; r < last; ++r) fn(r, count * r / ranges, count * (r + 1) / ranges);
  });
  return ranges;
}

// The first `ranges` parts, joined in order into one tensor of `dtype` (T's own type).
template <typename T>
torch::Tensor joined(const std::vector<std::vector<T>>& parts, int64_t ranges,
                     torch::ScalarType dtype) {
  int64_t total = 0;
  for (int64_t r = 0; r < ranges; ++r) total += (int64_t)parts[r].size();
  auto out = torch::empty({total}, dtype);
  T* o = out.data_ptr<T>();
  for (int64_t r = 0; r < ranges; ++r) o = std::copy(parts[r].begin(), parts[r].end(), o);
  return out;
}

// Open addressing over words: a lookup hashes the word once and compares bytes, no allocation
// (std::unordered_map<std::string> ran at ~6 M words/s here). A slot (32 bytes, two a cache
// line) keeps the hash, the value and the key together: a key of up to 8 bytes in the slot
// itself, a longer one in the table's arena, so most lookups touch one line (a key read from
// the arena cost a second miss for each rare word). `hash` is public so a caller can hash a
// document's words first and `prefetch` their slots, overlapping the misses of a table far
// larger than the cache. Views of keys (`Slot::view`) last until the next insertion.
class WordTable {
 public:
  explicit WordTable(size_t expected = 1 << 16) { rehash(capacity_for(expected)); }

  // A word's hash, 8 bytes at a time: each chunk (the last one zero-padded) folded in by a
  // 64 x 64 -> 128-bit product whose halves are xored (wyhash's "mum"). A byte at a time
  // (FNV-1a) was a dependency chain of one multiply per byte. `p` must be readable up to the
  // 8 bytes that hold the word's last byte (HashedWords pads its buffer); `hash` copies.
  static uint64_t hash_padded(const char* p, size_t n) {
    uint64_t h = kSeed ^ n;
    for (; n > 8; p += 8, n -= 8) h = fold(h ^ load(p));
    return fold(h ^ (n == 0 ? 0 : load(p) & (~0ull >> (64 - 8 * n))));
  }
  static uint64_t hash(std::string_view word) {
    std::string padded(word);
    padded.append(8, '\0');
    return hash_padded(padded.data(), word.size());
  }

  void prefetch(uint64_t h) const { __builtin_prefetch(&slots_[h & (slots_.size() - 1)]); }

  static constexpr size_t kInline = 8;  // keys this long or shorter live in their slot
  static constexpr uint32_t kEmpty = UINT32_MAX;
  struct Slot {
    uint64_t hash;
    int64_t value;
    union {
      const char* far;     // size > kInline: the arena's copy
      char near[kInline];  // size <= kInline
    } key;
    uint32_t size;   // kEmpty: an empty slot
    uint32_t index;  // the order words came in: 0, 1, ...
    bool empty() const { return size == kEmpty; }
    std::string_view view() const {
      return std::string_view(size <= kInline ? key.near : key.far, size);
    }
  };

  // The slot of `word` (hashed to `h`), added with value 0 if new.
  Slot& at(std::string_view word, uint64_t h) {
    if (2 * (size_ + 1) > slots_.size()) rehash(slots_.size() * 2);
    size_t i = h & (slots_.size() - 1);
    while (true) {
      Slot& slot = slots_[i];
      if (slot.empty()) {
        slot.hash = h, slot.value = 0, slot.size = (uint32_t)word.size();
        slot.index = (uint32_t)size_++;
        if (word.size() <= kInline)
          std::copy(word.begin(), word.end(), slot.key.near);
        else
          slot.key.far = store(word);
        return slot;
      }
      if (slot.hash == h && slot.view() == word) return slot;
      i = (i + 1) & (slots_.size() - 1);
    }
  }
  Slot& at(std::string_view word) { return at(word, hash(word)); }

  // The slot of `word` (hashed to `h`), or null.
  const Slot* find(std::string_view word, uint64_t h) const {
    size_t i = h & (slots_.size() - 1);
    while (!slots_[i].empty()) {
      if (slots_[i].hash == h && slots_[i].view() == word) return &slots_[i];
      i = (i + 1) & (slots_.size() - 1);
    }
    return nullptr;
  }

  size_t size() const { return size_; }

  template <typename Visit>
  void each(Visit visit) const {
    for (const Slot& slot : slots_)
      if (!slot.empty()) visit(slot);
  }

 private:
  static size_t capacity_for(size_t n) {
    size_t c = 16;
    while (c < 2 * n) c *= 2;
    return c;
  }
  const char* store(std::string_view word) {
    if (arena_.empty() || arena_.back().size() + word.size() > arena_.back().capacity()) {
      arena_.emplace_back();
      arena_.back().reserve(std::max<size_t>(1 << 20, word.size()));
    }
    std::string& block = arena_.back();  // never grows past its capacity: keys stay put
    const size_t at = block.size();
    block.append(word.data(), word.size());
    return block.data() + at;
  }
  void rehash(size_t capacity) {
    Slot vacant{};
    vacant.size = kEmpty;
    std::vector<Slot> slots(capacity, vacant);
    for (const Slot& slot : slots_) {
      if (slot.empty()) continue;
      size_t j = slot.hash & (capacity - 1);
      while (!slots[j].empty()) j = (j + 1) & (capacity - 1);
      slots[j] = slot;
    }
    slots_.swap(slots);
  }

  static constexpr uint64_t kSeed = 0x2d358dccaa6c78a5ull, kMultiplier = 0x9e3779b97f4a7c15ull;
  static uint64_t fold(uint64_t x) {
    const unsigned __int128 product = (unsigned __int128)x * kMultiplier;
    return (uint64_t)product ^ (uint64_t)(product >> 64);
  }
  static uint64_t load(const char* p) {
    uint64_t x;
    std::memcpy(&x, p, 8);
    return x;
  }

  std::vector<Slot> slots_;
  size_t size_ = 0;
  std::vector<std::string> arena_;
};

// A text's words (views into `buffer`, lowercased if asked) and their hashes, each word's
// table slot asked for before any is probed: ~100 cache misses of a document in flight
// together, not one by one. The Whitespace pre-tokenizer's split, by bit masks: for each 64
// bytes, which are word characters and which spaces (32 bytes at a compare with AVX2, a
// byte at a time without it and for a text's last bytes); a word is then a run of word bits,
// an "other" word a run of bits in neither mask, each found by counting trailing zeros
// instead of branching on every byte (1.5x faster than the byte loop it replaced).
class HashedWords {
 public:
  std::vector<std::pair<std::string_view, uint64_t>> words;

  template <typename Table>
  void read(std::string_view text, bool lowercase, const Table& table) {
    words.clear();
    const size_t n = text.size(), blocks = n / 64 + 1;  // the last block always partly past n
    buffer_.resize(blocks * 64 + 8);                    // + 8: WordTable::hash_padded reads
    for (auto* bits : {&nonspace_, &notword_, &notother_}) bits->resize(blocks + 1);
    nonspace_[blocks] = 1;  // a start past the end stops the scan
    const auto* in = reinterpret_cast<const unsigned char*>(text.data());
    for (size_t b = 0; b < blocks; ++b) {
      const size_t at = 64 * b;
      uint64_t word = 0, space = 0;
      char* out = buffer_.data() + at;
#ifdef __AVX2__
      if (at + 64 <= n) {
        classify_64(in + at, lowercase, out, word, space);
      } else
#endif
      {
        const size_t m = std::min<size_t>(64, n - at);
        classify_bytes(in + at, m, lowercase, out, word, space);
        space |= m == 64 ? 0 : ~0ull << m;  // past the end: spaces, so every run ends there
      }
      nonspace_[b] = ~space, notword_[b] = ~word, notother_[b] = word | space;
    }
    const char* out = buffer_.data();
    for (size_t start = next_set(nonspace_, 0); start < n;) {
      const bool is_word = !(notword_[start / 64] >> (start % 64) & 1);
      const size_t end = next_set(is_word ? notword_ : notother_, start);
      const uint64_t h = WordTable::hash_padded(out + start, end - start);
      words.emplace_back(std::string_view(out + start, end - start), h);
      table.prefetch(h);
      start = next_set(nonspace_, end);
    }
  }

 private:
  // The first position from `from` whose bit is set (a set bit lies past every search).
  static size_t next_set(const std::vector<uint64_t>& bits, size_t from) {
    size_t w = from / 64;
    uint64_t x = bits[w] & (~0ull << (from % 64));
    while (x == 0) x = bits[++w];
    return 64 * w + (size_t)__builtin_ctzll(x);
  }

  static void classify_bytes(const unsigned char* in, size_t m, bool lowercase, char* out,
                             uint64_t& word, uint64_t& space) {
    for (size_t j = 0; j < m; ++j) {
      unsigned char c = in[j];
      word |= (uint64_t)(kTable.kind[c] == kWord) << j;
      space |= (uint64_t)(kTable.kind[c] == kSpace) << j;
      if (lowercase && c >= 'A' && c <= 'Z') c = (unsigned char)(c - 'A' + 'a');
      out[j] = (char)c;
    }
  }

#ifdef __AVX2__
  // kTable's classes of 64 bytes as bit masks, and the bytes lowercased into `out`
  static void classify_64(const unsigned char* in, bool lowercase, char* out, uint64_t& word,
                          uint64_t& space) {
    const auto in_range = [](__m256i x, char low, char span) {  // low <= x <= low + span
      const __m256i d = _mm256_sub_epi8(x, _mm256_set1_epi8(low));
      return _mm256_cmpeq_epi8(_mm256_min_epu8(d, _mm256_set1_epi8(span)), d);
    };
    for (int half = 0; half < 2; ++half) {
      __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(in + 32 * half));
      const __m256i upper = in_range(v, 'A', 25);
      const __m256i is_word = _mm256_or_si256(
          _mm256_or_si256(upper, in_range(v, 'a', 25)),
          _mm256_or_si256(in_range(v, '0', 9), _mm256_cmpeq_epi8(v, _mm256_set1_epi8('_'))));
      const __m256i is_space =
          _mm256_or_si256(in_range(v, 9, 4), _mm256_cmpeq_epi8(v, _mm256_set1_epi8(' ')));
      if (lowercase) v = _mm256_add_epi8(v, _mm256_and_si256(upper, _mm256_set1_epi8(32)));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + 32 * half), v);
      word |= (uint64_t)(uint32_t)_mm256_movemask_epi8(is_word) << (32 * half);
      space |= (uint64_t)(uint32_t)_mm256_movemask_epi8(is_space) << (32 * half);
    }
  }
#endif

  std::string buffer_;
  std::vector<uint64_t> nonspace_, notword_, notother_;  // a bit a byte, 64 a block
};

// {ids (int32) of all plain texts of `texts` in order, each text's count of them (int64, 0 for a
// skipped text), indices of the texts that are not plain}: a word's id is id_of(its slot in
// `table`), dropped when the table lacks it or id_of gives -1; the texts split over torch's
// threads, the ranges joined in order.
template <typename IdOf>
std::vector<torch::Tensor> encode_texts(const Texts& texts, bool lowercase, const WordTable& table,
                                        IdOf id_of) {
  const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
  std::vector<std::vector<int32_t>> ids(threads);
  std::vector<std::vector<int64_t>> others(threads);
  auto lengths = torch::zeros({texts.count}, torch::kInt64);
  int64_t* length = lengths.data_ptr<int64_t>();
  const int64_t ranges = over_ranges(texts.count, [&](int64_t r, int64_t begin, int64_t end) {
    HashedWords hashed;
    ids[r].reserve(texts.expected_tokens(begin, end));
    for (int64_t t = begin; t < end; ++t) {
      if (!is_plain(texts[t])) { others[r].push_back(t); continue; }
      const size_t before = ids[r].size();
      hashed.read(texts[t], lowercase, table);
      for (const auto& [word, h] : hashed.words) {
        const WordTable::Slot* slot = table.find(word, h);
        const int64_t id = slot == nullptr ? -1 : id_of(*slot);
        if (id >= 0) ids[r].push_back((int32_t)id);
      }
      length[t] = (int64_t)(ids[r].size() - before);
    }
  });
  return {joined(ids, ranges, torch::kInt32), lengths, joined(others, ranges, torch::kInt64)};
}

// `word` as serde_json (and so tokenizers) writes a string: quotes, backslash and control
// characters escaped, every other byte as it is.
void append_json_string(std::string& out, std::string_view word) {
  static const char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (unsigned char c : word) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20) {
          out += "\\u00";
          out.push_back(kHex[c >> 4]);
          out.push_back(kHex[c & 15]);
        } else {
          out.push_back((char)c);
        }
    }
  }
  out.push_back('"');
}

}  // namespace

// The counts WordLevelTrainer's vocabulary comes from, and the ids of the texts counted.
// `count` reads the plain texts of an Arrow string array (split over torch's threads, each
// into its own table, merged in order), keeps which word each token was, and returns the
// indices of the other texts, whose words tokenizers finds and `add` counts. Once `ranked` has
// numbered the words, `counted_ids` gives the counted texts' ids without reading them again
// (encoding them afresh took as long as counting) and `encode` the ids of any other texts.
class WordCounts {
 public:
  explicit WordCounts(bool lowercase) : lowercase_(lowercase) {}

  torch::Tensor count(pybind11::buffer data, torch::Tensor starts, torch::Tensor ends) {
    // count() makes counts_ from its first range's table: nothing may be counted before it
    TORCH_CHECK(counted_.empty() && counts_.size() == 0 && !numbered_,
                "WordCounts: one count(), before add() and ranked()");
    const pybind11::buffer_info info = data.request();
    const Texts texts = texts_of(info, starts, ends);
    pybind11::gil_scoped_release unlocked;
    std::vector<WordTable> tables(std::max<int64_t>(1, at::get_num_threads()));
    std::vector<std::vector<int64_t>> others(tables.size());
    counted_.assign(tables.size(), {});
    tokens_.assign(texts.count, 0);
    const int64_t ranges = over_ranges(texts.count, [&](int64_t r, int64_t begin, int64_t end) {
      HashedWords hashed;
      Counted& mine = counted_[r];
      mine.begin = begin, mine.end = end;
      mine.words.reserve(texts.expected_tokens(begin, end));
      for (int64_t t = begin; t < end; ++t) {
        if (!is_plain(texts[t])) { others[r].push_back(t); continue; }
        hashed.read(texts[t], lowercase_, tables[r]);
        for (const auto& [word, h] : hashed.words) {
          WordTable::Slot& slot = tables[r].at(word, h);
          ++slot.value;
          mine.words.push_back(slot.index);
        }
        tokens_[t] = (int64_t)hashed.words.size();
      }
    });
    counted_.resize(ranges);
    // the first range's table becomes the merged one (its numbers stay); the others merge
    // into it in range order, so the merged numbering is the same for any thread count
    counted_[0].merged.resize(tables[0].size());
    std::iota(counted_[0].merged.begin(), counted_[0].merged.end(), 0u);
    counts_ = std::move(tables[0]);
    for (int64_t r = 1; r < ranges; ++r) {
      counted_[r].merged.resize(tables[r].size());
      tables[r].each([&](const WordTable::Slot& slot) {
        WordTable::Slot& merged = counts_.at(slot.view(), slot.hash);
        merged.value += slot.value;
        counted_[r].merged[slot.index] = merged.index;
      });
    }
    return joined(others, ranges, torch::kInt64);
  }

  void add(const std::vector<std::string>& words, const std::vector<int64_t>& counts) {
    TORCH_CHECK(!numbered_, "WordCounts.add: only before ranked()");
    for (size_t k = 0; k < words.size(); ++k) counts_.at(words[k]).value += counts[k];
  }

  // The words seen at least `min_count` times, ordered by count (descending) then by their
  // bytes, as many as `max_words`: WordLevelTrainer's order. They take the ids first_id, ...
  std::vector<std::string> ranked(int64_t min_count, int64_t max_words, int64_t first_id) {
    struct Kept {  // contiguous, and most comparisons settle on the count and the first bytes
      int64_t count;
      uint64_t head;  // the first 8 bytes, big-endian (zero-padded): they order as the bytes do
      std::string_view word;
      uint32_t index;
    };
    std::vector<Kept> kept;
    kept.reserve(counts_.size());
    counts_.each([&](const WordTable::Slot& slot) {
      if (slot.value < min_count) return;
      const std::string_view word = slot.view();
      uint64_t head = 0;
      for (size_t k = 0; k < 8; ++k)
        head = head << 8 | (k < word.size() ? (unsigned char)word[k] : 0u);
      kept.push_back({slot.value, head, word, slot.index});
    });
    // Most words are rare (Zipf): those counted fewer than kBucketed times are placed by
    // their count (a counting sort), so only words of one count are compared, by their
    // bytes; the few frequent ones are sorted whole. (One std::sort of all took 0.07 s of the
    // synthetic corpus's 690,000 words, its branches mispredicted.)
    constexpr int64_t kBucketed = 1024;
    const auto by_bytes = [](const Kept& a, const Kept& b) {
      return a.head != b.head ? a.head < b.head : a.word < b.word;
    };
    std::vector<Kept> ordered;
    ordered.reserve(kept.size());
    std::vector<int64_t> place(kBucketed + 1, 0);  // count -> where its words go
    for (const Kept& k : kept) {
      if (k.count >= kBucketed) ordered.push_back(k);
      else ++place[k.count];
    }
    std::sort(ordered.begin(), ordered.end(), [&](const Kept& a, const Kept& b) {
      return a.count != b.count ? a.count > b.count : by_bytes(a, b);
    });
    int64_t at = (int64_t)ordered.size();
    for (int64_t c = kBucketed - 1; c >= 0; --c) std::swap(place[c], at), at += place[c];
    std::vector<int64_t> group_start(place.begin(), place.end() - 1);
    ordered.resize(kept.size());
    for (const Kept& k : kept)
      if (k.count < kBucketed) ordered[place[k.count]++] = k;
    for (int64_t c = 0; c < kBucketed; ++c)  // each count's words now lie in [start, place)
      std::sort(ordered.begin() + group_start[c], ordered.begin() + place[c], by_bytes);
    kept.swap(ordered);
    if ((int64_t)kept.size() > max_words) kept.resize(std::max<int64_t>(max_words, 0));
    id_of_.assign(counts_.size(), -1);
    first_id_ = first_id;
    numbered_ = true;
    ranked_.clear();
    ranked_counts_ = torch::empty({(int64_t)kept.size()}, torch::kInt64);
    int64_t* count = ranked_counts_.data_ptr<int64_t>();
    std::vector<std::string> out;
    out.reserve(kept.size());
    for (size_t k = 0; k < kept.size(); ++k) {
      id_of_[kept[k].index] = (int32_t)(first_id + (int64_t)k);
      ranked_.push_back(kept[k].word);
      count[k] = kept[k].count;
      out.emplace_back(kept[k].word);
    }
    return out;
  }

  // The ranked words' counts, in id order: their occurrences in the texts counted and added,
  // so the occurrences of their ids in those texts' ids.
  torch::Tensor ranked_counts() const {
    TORCH_CHECK(numbered_, "WordCounts.ranked_counts: after ranked()");
    return ranked_counts_;
  }

  // The ranked words as the members of a JSON object, "word":id, in id order: the vocabulary
  // tokenizers' WordLevel model writes.
  std::string ranked_json() const {
    std::string out;
    for (size_t k = 0; k < ranked_.size(); ++k) {
      if (k) out.push_back(',');
      append_json_string(out, ranked_[k]);
      out.push_back(':');
      out += std::to_string(first_id_ + (int64_t)k);
    }
    return out;
  }

  // {ids (int32) of the counted plain texts in order, each text's count of them (int64)}:
  // the ranked words' ids, the others dropped; once, after ranked().
  std::vector<torch::Tensor> counted_ids() {
    TORCH_CHECK(numbered_, "WordCounts.counted_ids: after ranked()");
    pybind11::gil_scoped_release unlocked;
    const int64_t ranges = (int64_t)counted_.size();
    auto lengths = torch::zeros({(int64_t)tokens_.size()}, torch::kInt64);
    int64_t* length = lengths.data_ptr<int64_t>();
    // each range writes its ids where its tokens start in one output, then the ranges close
    // up over the dropped (unranked) words: no per-range vectors copied into the output
    std::vector<int64_t> start(ranges + 1, 0), kept(ranges, 0);
    for (int64_t r = 0; r < ranges; ++r) start[r + 1] = start[r] + (int64_t)counted_[r].words.size();
    auto out = torch::empty({start[ranges]}, torch::kInt32);
    int32_t* ids = out.data_ptr<int32_t>();
    at::parallel_for(0, ranges, 1, [&](int64_t first, int64_t last) {
      for (int64_t r = first; r < last; ++r) {
        const Counted& counted = counted_[r];
        std::vector<int32_t> id_of(counted.merged.size());  // by the range's own numbers
        for (size_t w = 0; w < id_of.size(); ++w) id_of[w] = id_of_[counted.merged[w]];
        const uint32_t* word = counted.words.data();
        const uint32_t* words_end = word + counted.words.size();
        int32_t* o = ids + start[r];
        for (int64_t t = counted.begin; t < counted.end; ++t) {
          const int32_t* before = o;
          for (int64_t k = 0; k < tokens_[t]; ++k, ++word) {
            if (word + rows::kAhead < words_end) __builtin_prefetch(&id_of[word[rows::kAhead]]);
            const int32_t id = id_of[*word];
            *o = id;
            o += id >= 0;
          }
          length[t] = (int64_t)(o - before);
        }
        kept[r] = (int64_t)(o - (ids + start[r]));
      }
    });
    int64_t total = kept[0];
    for (int64_t r = 1; r < ranges; ++r) {
      std::memmove(ids + total, ids + start[r], (size_t)kept[r] * sizeof(int32_t));
      total += kept[r];
    }
    counted_.clear(), counted_.shrink_to_fit();
    tokens_.clear(), tokens_.shrink_to_fit();
    return {out.narrow(0, 0, total), lengths};
  }

  // WordIds.encode of other texts through the ranked words' ids.
  std::vector<torch::Tensor> encode(pybind11::buffer data, torch::Tensor starts,
                                    torch::Tensor ends) const {
    TORCH_CHECK(numbered_, "WordCounts.encode: after ranked()");
    const pybind11::buffer_info info = data.request();
    const Texts texts = texts_of(info, starts, ends);
    pybind11::gil_scoped_release unlocked;
    return encode_texts(texts, lowercase_, counts_,
                        [&](const WordTable::Slot& slot) { return id_of_[slot.index]; });
  }

 private:
  struct Counted {  // one range of the counted texts: which word each token was
    int64_t begin = 0, end = 0;
    std::vector<uint32_t> words;   // numbered in the range's own table
    std::vector<uint32_t> merged;  // the range's word numbers in counts_
  };

  bool lowercase_;
  WordTable counts_;
  std::vector<Counted> counted_;
  std::vector<int64_t> tokens_;  // each counted text's token count (0: not plain)
  std::vector<int32_t> id_of_;   // each word's id by its number in counts_, -1: not ranked
  std::vector<std::string_view> ranked_;
  torch::Tensor ranked_counts_;
  int64_t first_id_ = 0;
  bool numbered_ = false;  // ranked() gave the words their ids
};

// A vocabulary's lookup: plain texts to the ids of their known words (unknown ones dropped,
// as nlp_adagrad.vocab drops [UNK]).
class WordIds {
 public:
  WordIds(const std::vector<std::string>& words, const std::vector<int64_t>& ids, bool lowercase)
      : lowercase_(lowercase), lookup_(words.size()) {
    for (size_t k = 0; k < words.size(); ++k) lookup_.at(words[k]).value = ids[k];
  }

  // encode_texts of an Arrow string array's texts
  std::vector<torch::Tensor> encode(pybind11::buffer data, torch::Tensor starts,
                                    torch::Tensor ends) const {
    const pybind11::buffer_info info = data.request();
    const Texts texts = texts_of(info, starts, ends);
    pybind11::gil_scoped_release unlocked;
    return encode_texts(texts, lowercase_, lookup_,
                        [](const WordTable::Slot& slot) { return slot.value; });
  }

 private:
  bool lowercase_;
  WordTable lookup_;
};

namespace {

// x % d for a fixed d by two multiplications instead of a division (Lemire, Kaser and Kurz,
// "Faster remainder by direct computation", 2019: exact for every 64-bit x and d): the bigram
// hash's remainder was most of add_bigrams' time.
class Remainder {
 public:
  explicit Remainder(uint64_t d) : d_(d), m_(~(unsigned __int128)0 / d + 1) {}
  uint64_t operator()(uint64_t x) const {
    const unsigned __int128 low = m_ * x;  // the fraction x / d, in 128 bits
    const unsigned __int128 bottom = ((low & ~0ull) * d_) >> 64;
    return (uint64_t)((bottom + (low >> 64) * d_) >> 64);
  }

 private:
  uint64_t d_;
  unsigned __int128 m_;
};

}  // namespace

// fastText's word bigrams (nlp_adagrad.vocab.add_bigrams, the same ids: tested): each
// document's word ids, then the row num_words + (a * 116049371 + b) % buckets of each pair of
// neighbours (a, b), in int64. {ids, offsets}, both int64. One pass; the NumPy version's
// scatters took 3 s of the synthetic corpus's tokenizing. The ids may be int32, as the Arrow
// column stores them: widening them first was a copy of every id (~0.07 s of that corpus).
template <typename Id>
static void write_bigrams(const Id* in, const int64_t* start, int64_t docs, const int64_t* out_start,
                          int64_t* out, int64_t num_words, int64_t buckets) {
  const Remainder bucket_of(buckets);
  at::parallel_for(0, docs, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) {
      const Id* words = in + start[d];
      const int64_t length = start[d + 1] - start[d];
      int64_t* o = std::copy(words, words + length, out + out_start[d]);
      for (int64_t k = 0; k + 1 < length; ++k)
        *o++ = num_words + (int64_t)bucket_of((uint64_t)((int64_t)words[k] * 116049371 + words[k + 1]));
    }
  });
}

std::vector<torch::Tensor> add_bigrams(torch::Tensor ids, torch::Tensor offsets, int64_t num_words,
                                       int64_t buckets) {
  TORCH_CHECK((ids.scalar_type() == torch::kInt64 || ids.scalar_type() == torch::kInt32) &&
                  offsets.scalar_type() == torch::kInt64 && ids.is_contiguous() &&
                  offsets.is_contiguous() && buckets > 0,
              "add_bigrams: contiguous int32 or int64 ids, int64 offsets, buckets > 0");
  const int64_t docs = offsets.size(0) - 1;
  const int64_t* start = offsets.data_ptr<int64_t>();
  auto new_offsets = torch::empty({docs + 1}, torch::kInt64);
  int64_t* out_start = new_offsets.data_ptr<int64_t>();
  out_start[0] = 0;
  for (int64_t d = 0; d < docs; ++d) {
    const int64_t length = start[d + 1] - start[d];
    out_start[d + 1] = out_start[d] + length + std::max<int64_t>(length - 1, 0);
  }
  auto out_ids = torch::empty({out_start[docs]}, torch::kInt64);
  int64_t* out = out_ids.data_ptr<int64_t>();
  if (ids.scalar_type() == torch::kInt32)
    write_bigrams(ids.data_ptr<int32_t>(), start, docs, out_start, out, num_words, buckets);
  else
    write_bigrams(ids.data_ptr<int64_t>(), start, docs, out_start, out, num_words, buckets);
  return {out_ids, new_offsets};
}

// Occurrences of each row id in `ids` below num_rows (int64; np.bincount's numbers): one pass,
// each id's counter requested rows::kAhead ids ahead, so the increments' cache misses overlap
// (the bigram rows' counters lie far apart in a table larger than the cache). An id at or
// above num_rows is refused, or with `only_below` passed over: a classifier's telemetry counts
// its words, not the bigram buckets that follow each document's words.
torch::Tensor row_counts(torch::Tensor ids, int64_t num_rows, bool only_below) {
  TORCH_CHECK(ids.scalar_type() == torch::kInt64 && ids.is_contiguous() && num_rows >= 0,
              "row_counts: contiguous int64 ids and num_rows >= 0");
  auto counts = torch::zeros({num_rows}, torch::kInt64);
  int64_t* count = counts.data_ptr<int64_t>();
  const int64_t* id = ids.data_ptr<int64_t>();
  const int64_t n = ids.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (i + rows::kAhead < n && (uint64_t)id[i + rows::kAhead] < (uint64_t)num_rows)
      __builtin_prefetch(count + id[i + rows::kAhead], 1);
    if ((uint64_t)id[i] >= (uint64_t)num_rows) {
      TORCH_CHECK(only_below && id[i] >= 0, "row_counts: id ", id[i], " outside [0, ", num_rows, ")");
      continue;
    }
    ++count[id[i]];
  }
  return counts;
}

void bind_words(pybind11::module_& m) {
  m.def("row_counts", &row_counts, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "occurrences of each row id (np.bincount's)");
  m.def("add_bigrams", &add_bigrams, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "fastText's hashed word bigrams after each document's words");
  pybind11::class_<WordCounts>(m, "WordCounts")
      .def(pybind11::init<bool>())
      .def("count", &WordCounts::count, "count the plain texts' words; the others' indices")
      .def("add", &WordCounts::add, "add words found elsewhere, with their counts")
      .def("ranked", &WordCounts::ranked, "WordLevelTrainer's vocabulary of the counts")
      .def("ranked_json", &WordCounts::ranked_json, "the ranked words as JSON members")
      .def("ranked_counts", &WordCounts::ranked_counts, "the ranked words' counts, in id order")
      .def("counted_ids", &WordCounts::counted_ids, "ids of the counted texts, once")
      .def("encode", &WordCounts::encode, "ids of other plain texts' known words");
  pybind11::class_<WordIds>(m, "WordIds")
      .def(pybind11::init<const std::vector<std::string>&, const std::vector<int64_t>&, bool>())
      .def("encode", &WordIds::encode, "ids of the plain texts' known words");
}
