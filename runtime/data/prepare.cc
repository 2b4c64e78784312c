#include "runtime/data/prepare.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>

#include "runtime/data/byte_tokenizer.h"
#include "runtime/data/token_file_writer.h"

namespace dstrain::runtime {
namespace {

base::Status bad_line(const std::string& file, int64_t line, const std::string& what) {
  return base::Status::BadInput(file + ":" + std::to_string(line) + ": " + what);
}

base::Status check_utf8(const std::string& file, int64_t line, const std::string& text) {
  int64_t at = first_invalid_utf8(text);
  if (at < 0) return base::Status::Ok();
  return bad_line(file, line, "invalid UTF-8 at byte " + std::to_string(at + 1) + " of the line");
}

base::Status open_input(const std::string& path, std::ifstream& in) {
  in.open(path, std::ios::binary);
  if (!in) return base::Status::BadInput(path + ": cannot open for reading");
  return base::Status::Ok();
}

base::Status check_read(const std::string& path, const std::ifstream& in) {
  if (in.bad()) return base::Status::IOError(path + ": read failed");
  return base::Status::Ok();
}

bool is_blank(const std::string& line) {
  return line.find_first_not_of(" \t\r\n") == std::string::npos;
}

// Reads one JSONL record into `prompt` and `completion`.
base::Status parse_record(const std::string& file, int64_t line_no, const std::string& line,
                          std::string* prompt, std::string* completion) {
  RETURN_IF_ERROR(check_utf8(file, line_no, line));
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
      return bad_line(file, line_no, std::string("field \"") + key + "\" is " + it->type_name() +
                                         ", expected a string");
    }
  }
  *prompt = record["prompt"].get_ref<const std::string&>();
  *completion = record["completion"].get_ref<const std::string&>();
  return base::Status::Ok();
}

void finish_stats(const TokenFileWriter& writer, int64_t targets, PrepareStats* stats) {
  if (stats == nullptr) return;
  stats->num_docs = writer.num_docs();
  stats->num_tokens = writer.num_tokens();
  stats->num_target_tokens = targets;
}

}  // namespace

base::Status prepare_text(const std::vector<std::string>& inputs, const std::string& out,
                          PrepareStats* stats) {
  if (inputs.empty()) return base::Status::InvalidArgument("prepare: no input files");
  ASSIGN_OR_RETURN(TokenFileWriter writer,
                   TokenFileWriter::create(out, {kByteVocabSize, /*documents=*/true,
                                                 /*mask=*/false}));
  std::vector<uint32_t> tokens;
  for (const std::string& path : inputs) {
    std::ifstream in;
    RETURN_IF_ERROR(open_input(path, in));
    RETURN_IF_ERROR(writer.start_document());
    RETURN_IF_ERROR(writer.append({kByteBos}));
    std::string line;
    for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
      RETURN_IF_ERROR(check_utf8(path, line_no, line));
      // getline stops short of end-of-file only after consuming a newline.
      if (!in.eof()) line.push_back('\n');
      tokens.clear();
      byte_encode(line, tokens);
      RETURN_IF_ERROR(writer.append(tokens));
    }
    RETURN_IF_ERROR(check_read(path, in));
    RETURN_IF_ERROR(writer.append({kByteEos}));
  }
  int64_t targets = writer.num_tokens();
  RETURN_IF_ERROR(writer.finish());
  finish_stats(writer, targets, stats);
  return base::Status::Ok();
}

base::Status prepare_sft_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                               PrepareStats* stats) {
  if (inputs.empty()) return base::Status::InvalidArgument("prepare: no input files");
  ASSIGN_OR_RETURN(TokenFileWriter writer,
                   TokenFileWriter::create(out, {kByteVocabSize, /*documents=*/true,
                                                 /*mask=*/true}));
  int64_t targets = 0;
  std::vector<uint32_t> tokens;
  std::vector<uint8_t> mask;
  for (const std::string& path : inputs) {
    std::ifstream in;
    RETURN_IF_ERROR(open_input(path, in));
    std::string line;
    std::string prompt;
    std::string completion;
    for (int64_t line_no = 1; std::getline(in, line); ++line_no) {
      if (is_blank(line)) continue;
      RETURN_IF_ERROR(parse_record(path, line_no, line, &prompt, &completion));
      tokens.assign({kByteBos});
      byte_encode(prompt, tokens);
      size_t prompt_end = tokens.size();
      byte_encode(completion, tokens);
      tokens.push_back(kByteEos);
      mask.assign(tokens.size(), 1);
      std::fill(mask.begin(), mask.begin() + static_cast<std::ptrdiff_t>(prompt_end), 0);
      targets += static_cast<int64_t>(tokens.size() - prompt_end);
      RETURN_IF_ERROR(writer.start_document());
      RETURN_IF_ERROR(writer.append(tokens, mask));
    }
    RETURN_IF_ERROR(check_read(path, in));
  }
  if (writer.num_docs() == 0) {
    return base::Status::BadInput(inputs.front() + (inputs.size() > 1 ? " (and the others)" : "") +
                                  ": no records: every line is blank");
  }
  RETURN_IF_ERROR(writer.finish());
  finish_stats(writer, targets, stats);
  return base::Status::Ok();
}

}  // namespace dstrain::runtime
