// Word-level tokenizing of ASCII text, as the `tokenizers` pipeline nlp_adagrad.vocab builds
// does it: NFKC (the identity on ASCII), optional lowercase, the Whitespace pre-tokenizer
// (`\w+|[^\w\s]+`: runs of word characters, runs of other non-space characters) and the
// WordLevel lookup. A text with any byte >= 0x80 is left to `tokenizers` (its index comes
// back), so the output is the same for every text (tested against tokenizers on BBC News and
// the synthetic corpus). Why C++: tokenizers ran at ~3 M tokens/s here, longer than
// fastText's whole training on the synthetic corpus.
//
// On ASCII, \w is [A-Za-z0-9_] and \s is \t \n \v \f \r and space (Unicode's White_Space:
// not 0x1c-0x1f, which are "other" like punctuation).
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <string>
#include <string_view>
#include <vector>

namespace {

enum Kind : unsigned char { kSpace, kWord, kOther };

struct Table {  // only ASCII texts are read (is_ascii): bytes from 128 up never come here
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

bool is_ascii(const std::string& text) {
  for (unsigned char c : text)
    if (c >= 128) return false;
  return true;
}

// Calls emit(word) for each pre-token of an ASCII text (a view into `buffer`, which holds the
// text lowercased if asked).
template <typename Emit>
void pre_tokens(const std::string& text, bool lowercase, std::string& buffer, Emit emit) {
  buffer = text;
  if (lowercase)
    for (char& c : buffer)
      if (c >= 'A' && c <= 'Z') c = (char)(c - 'A' + 'a');
  const size_t n = buffer.size();
  size_t i = 0;
  while (i < n) {
    const Kind k = kTable.kind[(unsigned char)buffer[i]];
    if (k == kSpace) { ++i; continue; }
    size_t j = i + 1;
    while (j < n && kTable.kind[(unsigned char)buffer[j]] == k) ++j;
    emit(std::string_view(buffer.data() + i, j - i));
    i = j;
  }
}

// Open addressing over string views whose bytes live in the table's own arena: a lookup
// hashes the word once and compares bytes, no allocation (std::unordered_map<std::string>
// ran at ~6 M words/s here, this at several times that).
class WordTable {
 public:
  explicit WordTable(size_t expected = 1 << 16) { rehash(capacity_for(expected)); }

  // The slot of `word`, added (value 0) if new.
  int64_t& at(std::string_view word) {
    if (2 * (size_ + 1) > keys_.size()) rehash(keys_.size() * 2);
    const uint64_t h = hash(word);
    size_t i = h & (keys_.size() - 1);
    while (true) {
      if (keys_[i].data() == nullptr) {
        keys_[i] = store(word);
        hashes_[i] = h;
        ++size_;
        return values_[i];
      }
      if (hashes_[i] == h && keys_[i] == word) return values_[i];
      i = (i + 1) & (keys_.size() - 1);
    }
  }

  // The value of `word`, or -1.
  int64_t find(std::string_view word) const {
    const uint64_t h = hash(word);
    size_t i = h & (keys_.size() - 1);
    while (keys_[i].data() != nullptr) {
      if (hashes_[i] == h && keys_[i] == word) return values_[i];
      i = (i + 1) & (keys_.size() - 1);
    }
    return -1;
  }

  template <typename Visit>
  void each(Visit visit) const {
    for (size_t i = 0; i < keys_.size(); ++i)
      if (keys_[i].data() != nullptr) visit(keys_[i], values_[i]);
  }

 private:
  static uint64_t hash(std::string_view word) {  // FNV-1a, then a final mix
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : word) h = (h ^ c) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
  }
  static size_t capacity_for(size_t n) {
    size_t c = 16;
    while (c < 2 * n) c *= 2;
    return c;
  }
  std::string_view store(std::string_view word) {
    if (arena_.empty() || arena_.back().size() + word.size() > arena_.back().capacity()) {
      arena_.emplace_back();
      arena_.back().reserve(std::max<size_t>(1 << 20, word.size()));
    }
    std::string& block = arena_.back();  // never grows past its capacity: views stay valid
    const size_t at = block.size();
    block.append(word.data(), word.size());
    return std::string_view(block.data() + at, word.size());
  }
  void rehash(size_t capacity) {
    std::vector<std::string_view> keys(capacity);
    std::vector<uint64_t> hashes(capacity);
    std::vector<int64_t> values(capacity);
    for (size_t i = 0; i < keys_.size(); ++i) {
      if (keys_[i].data() == nullptr) continue;
      size_t j = hashes_[i] & (capacity - 1);
      while (keys[j].data() != nullptr) j = (j + 1) & (capacity - 1);
      keys[j] = keys_[i];
      hashes[j] = hashes_[i];
      values[j] = values_[i];
    }
    keys_.swap(keys);
    hashes_.swap(hashes);
    values_.swap(values);
  }

  std::vector<std::string_view> keys_;
  std::vector<uint64_t> hashes_;
  std::vector<int64_t> values_;
  size_t size_ = 0;
  std::vector<std::string> arena_;
};

}  // namespace

// The vocabulary WordLevelTrainer makes: the words of the ASCII texts (others are skipped)
// plus `extra` words with their counts (what tokenizers found in the other texts), those seen
// at least `min_count` times, ordered by count (descending) then by their bytes, as many as
// `max_words`.
std::vector<std::string> ranked_words(const std::vector<std::string>& texts, bool lowercase,
                                      const std::vector<std::string>& extra_words,
                                      const std::vector<int64_t>& extra_counts, int64_t min_count,
                                      int64_t max_words) {
  WordTable counts;
  std::string buffer;
  for (const auto& text : texts)
    if (is_ascii(text))
      pre_tokens(text, lowercase, buffer, [&](std::string_view w) { ++counts.at(w); });
  for (size_t k = 0; k < extra_words.size(); ++k) counts.at(extra_words[k]) += extra_counts[k];
  std::vector<std::pair<int64_t, std::string_view>> kept;
  counts.each([&](std::string_view word, int64_t count) {
    if (count >= min_count) kept.emplace_back(count, word);
  });
  std::sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  if ((int64_t)kept.size() > max_words) kept.resize(std::max<int64_t>(max_words, 0));
  std::vector<std::string> out;
  out.reserve(kept.size());
  for (const auto& [count, word] : kept) out.emplace_back(word);
  return out;
}

// A vocabulary's lookup: ASCII texts to the ids of their known words (unknown ones dropped,
// as nlp_adagrad.vocab drops [UNK]).
class WordIds {
 public:
  WordIds(const std::vector<std::string>& words, const std::vector<int64_t>& ids, bool lowercase)
      : lowercase_(lowercase), lookup_(words.size()) {
    for (size_t k = 0; k < words.size(); ++k) lookup_.at(words[k]) = ids[k];
  }

  // {ids (int32) of all ASCII texts in order, each text's count of them (int64, 0 for a
  // skipped text), indices of the texts that are not ASCII}
  std::vector<torch::Tensor> encode(const std::vector<std::string>& texts) const {
    std::vector<int32_t> ids;
    std::vector<int64_t> lengths(texts.size(), 0), skipped;
    std::string buffer;
    for (size_t d = 0; d < texts.size(); ++d) {
      if (!is_ascii(texts[d])) { skipped.push_back((int64_t)d); continue; }
      const size_t before = ids.size();
      pre_tokens(texts[d], lowercase_, buffer, [&](std::string_view w) {
        const int64_t id = lookup_.find(w);
        if (id >= 0) ids.push_back((int32_t)id);
      });
      lengths[d] = (int64_t)(ids.size() - before);
    }
    auto out = torch::empty({(int64_t)ids.size()}, torch::kInt32);
    std::copy(ids.begin(), ids.end(), out.data_ptr<int32_t>());
    auto len = torch::empty({(int64_t)lengths.size()}, torch::kInt64);
    std::copy(lengths.begin(), lengths.end(), len.data_ptr<int64_t>());
    auto skip = torch::empty({(int64_t)skipped.size()}, torch::kInt64);
    std::copy(skipped.begin(), skipped.end(), skip.data_ptr<int64_t>());
    return {out, len, skip};
  }

 private:
  bool lowercase_;
  WordTable lookup_;
};

// fastText's word bigrams (nlp_adagrad.vocab.add_bigrams, the same ids: tested): each
// document's word ids, then the row num_words + (a * 116049371 + b) % buckets of each pair of
// neighbours (a, b). {ids, offsets}, both int64. One pass; the NumPy version's scatters took
// 3 s of the synthetic corpus's tokenizing.
std::vector<torch::Tensor> add_bigrams(torch::Tensor ids, torch::Tensor offsets, int64_t num_words,
                                       int64_t buckets) {
  TORCH_CHECK(ids.scalar_type() == torch::kInt64 && offsets.scalar_type() == torch::kInt64 &&
                  ids.is_contiguous() && offsets.is_contiguous() && buckets > 0,
              "add_bigrams: contiguous int64 ids and offsets, buckets > 0");
  const int64_t docs = offsets.size(0) - 1;
  const int64_t* in = ids.data_ptr<int64_t>();
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
  at::parallel_for(0, docs, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t d = begin; d < end; ++d) {
      const int64_t* words = in + start[d];
      const int64_t length = start[d + 1] - start[d];
      int64_t* o = std::copy(words, words + length, out + out_start[d]);
      for (int64_t k = 0; k + 1 < length; ++k)
        *o++ = num_words + (words[k] * 116049371 + words[k + 1]) % buckets;
    }
  });
  return {out_ids, new_offsets};
}

void bind_words(pybind11::module_& m) {
  m.def("add_bigrams", &add_bigrams, pybind11::call_guard<pybind11::gil_scoped_release>(),
        "fastText's hashed word bigrams after each document's words");
  m.def("ranked_words", &ranked_words, "WordLevelTrainer's vocabulary of the ASCII texts");
  pybind11::class_<WordIds>(m, "WordIds")
      .def(pybind11::init<const std::vector<std::string>&, const std::vector<int64_t>&, bool>())
      .def("encode", &WordIds::encode, "ids of the ASCII texts' known words");
}
