#include "runtime/data/prepare.h"

#include <algorithm>
#include <nlohmann/json.hpp>

#include "runtime/data/prepare_parts.h"
#include "runtime/data/tokenizer/utf8.h"

namespace dstrain::runtime {
namespace {

// A file up to this size is one piece, so a typical document is tokenized as one text.
constexpr uint64_t kTextCutBytes = uint64_t{64} << 20;
// JSONL records are independent: smaller pieces spread the work more evenly.
constexpr uint64_t kJsonlCutBytes = uint64_t{8} << 20;
constexpr uint64_t kGroupBytes = uint64_t{8} << 20;

base::Status bad_line(const std::string& file, int64_t line, const std::string& what) {
  return base::Status::BadInput(file + ":" + std::to_string(line) + ": " + what);
}

bool is_blank(std::string_view line) {
  return line.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

// The UTF-8 error at `at` in a segment, located by file line and byte within the line.
base::Status utf8_error(const Segment& seg, std::string_view bytes, size_t at) {
  size_t nl = at == 0 ? std::string_view::npos : bytes.rfind('\n', at - 1);
  size_t line_start = nl == std::string_view::npos ? 0 : nl + 1;
  int64_t line =
      seg.first_line() +
      std::count(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(line_start), '\n');
  return bad_line(*seg.file, line,
                  "invalid UTF-8 at byte " + std::to_string(at - line_start + 1) + " of the line");
}

base::Status encode_text_segment(const Tokenizer& tok, const Segment& seg, std::string_view bytes,
                                 PieceOutput& out) {
  int64_t bad = first_invalid_utf8(bytes);
  if (bad >= 0) return utf8_error(seg, bytes, static_cast<size_t>(bad));
  if (seg.begin == 0) {
    out.doc_starts.push_back(out.tokens.size());
    if (tok.bos_id().has_value()) out.tokens.push_back(*tok.bos_id());
  }
  tok.encode(bytes, out.tokens);
  if (seg.end == seg.file_size && tok.eos_id().has_value()) out.tokens.push_back(*tok.eos_id());
  out.targets = static_cast<int64_t>(out.tokens.size());
  return base::Status::Ok();
}

// Reads one JSONL record into `prompt` and `completion`.
base::Status parse_record(const std::string& file, int64_t line_no, std::string_view line,
                          std::string* prompt, std::string* completion) {
  if (int64_t at = first_invalid_utf8(line); at >= 0) {
    return bad_line(file, line_no,
                    "invalid UTF-8 at byte " + std::to_string(at + 1) + " of the line");
  }
  // allow_exceptions = false: a parse error yields a discarded value instead of throwing.
  nlohmann::json record = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (record.is_discarded()) return bad_line(file, line_no, "not valid JSON");
  if (!record.is_object()) {
    return bad_line(file, line_no,
                    "expected a JSON object with \"prompt\" and \"completion\", got " +
                        std::string(record.type_name()));
  }
  for (const char* key : {"prompt", "completion"}) {
    auto it = record.find(key);
    if (it == record.end()) {
      return bad_line(file, line_no, std::string("field \"") + key + "\" is missing");
    }
    if (!it->is_string()) {
      return bad_line(
          file, line_no,
          std::string("field \"") + key + "\" is " + it->type_name() + ", expected a string");
    }
  }
  *prompt = record["prompt"].get_ref<const std::string&>();
  *completion = record["completion"].get_ref<const std::string&>();
  return base::Status::Ok();
}

base::Status encode_sft_record(const Tokenizer& tok, const std::string& file, int64_t line,
                               std::string_view record, std::vector<uint32_t>& tokens,
                               std::vector<uint8_t>& mask) {
  std::string prompt;
  std::string completion;
  RETURN_IF_ERROR(parse_record(file, line, record, &prompt, &completion));
  if (tok.bos_id().has_value()) tokens.push_back(*tok.bos_id());
  tok.encode(prompt, tokens);
  size_t prompt_end = tokens.size();
  tok.encode(completion, tokens);
  if (tok.eos_id().has_value()) tokens.push_back(*tok.eos_id());
  mask.assign(tokens.size(), 1);
  std::fill(mask.begin(), mask.begin() + static_cast<std::ptrdiff_t>(prompt_end), 0);
  return base::Status::Ok();
}

// Each non-blank line of the segment through `encode`. Line numbers are relative until an error:
// the failing record is then encoded again with its true number, which costs a read of the file
// up to the segment only on that path.
base::Status encode_jsonl_segment(const RecordEncoder& encode, const Tokenizer& tok,
                                  const Segment& seg, std::string_view bytes, PieceOutput& out) {
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;
  int64_t rel = 0;
  for (size_t pos = 0; pos < bytes.size(); ++rel) {
    size_t nl = bytes.find('\n', pos);
    size_t end = nl == std::string_view::npos ? bytes.size() : nl;
    std::string_view line = bytes.substr(pos, end - pos);
    pos = nl == std::string_view::npos ? bytes.size() : nl + 1;
    if (is_blank(line)) continue;
    tokens.clear();
    mask.clear();
    base::Status st = encode(tok, *seg.file, rel + 1, line, tokens, mask);
    if (!st.ok()) {
      tokens.clear();
      mask.clear();
      st = encode(tok, *seg.file, seg.first_line() + rel, line, tokens, mask);
      if (!st.ok()) return st;
    }
    if (mask.size() != tokens.size()) {
      return base::Status::Internal("prepare: record encoder gave " + std::to_string(mask.size()) +
                                    " mask bytes for " + std::to_string(tokens.size()) + " tokens");
    }
    out.doc_starts.push_back(out.tokens.size());
    out.tokens.insert(out.tokens.end(), tokens.begin(), tokens.end());
    out.mask.insert(out.mask.end(), mask.begin(), mask.end());
    out.targets += std::count(mask.begin(), mask.end(), uint8_t{1});
  }
  return base::Status::Ok();
}

}  // namespace

base::Status prepare_text(const std::vector<std::string>& inputs, const std::string& out,
                          const PrepareOptions& options, PrepareStats* stats) {
  PartsJob job{
      inputs, out, "text", kTextCutBytes, kGroupBytes, /*mask=*/false, encode_text_segment};
  if (options.piece_bytes > 0) job.cut_bytes = job.group_bytes = options.piece_bytes;
  return run_parts_job(job, options, stats);
}

base::Status prepare_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                           const std::string& format, const RecordEncoder& encode,
                           const PrepareOptions& options, PrepareStats* stats) {
  PartsJob job{inputs,
               out,
               format,
               kJsonlCutBytes,
               kGroupBytes,
               /*mask=*/true,
               [&encode](const Tokenizer& tok, const Segment& seg, std::string_view bytes,
                         PieceOutput& piece) {
                 return encode_jsonl_segment(encode, tok, seg, bytes, piece);
               }};
  if (options.piece_bytes > 0) job.cut_bytes = job.group_bytes = options.piece_bytes;
  return run_parts_job(job, options, stats);
}

base::Status prepare_sft_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                               const PrepareOptions& options, PrepareStats* stats) {
  return prepare_jsonl(inputs, out, "sft", encode_sft_record, options, stats);
}

base::Status prepare_text(const std::vector<std::string>& inputs, const std::string& out,
                          PrepareStats* stats) {
  return prepare_text(inputs, out, PrepareOptions(), stats);
}

base::Status prepare_sft_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                               PrepareStats* stats) {
  return prepare_sft_jsonl(inputs, out, PrepareOptions(), stats);
}

}  // namespace dstrain::runtime
