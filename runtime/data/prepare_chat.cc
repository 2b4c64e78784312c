#include "runtime/data/prepare_chat.h"

namespace dstrain::runtime {
namespace {

const char* format_key(ChatFormat format) {
  switch (format) {
    case ChatFormat::kLlama3:
      return "chat-llama3";
    case ChatFormat::kChatml:
      return "chat-chatml";
    case ChatFormat::kDeepseek:
      return "chat-deepseek";
  }
  return "chat";
}

}  // namespace

base::Status encode_chat_record(ChatFormat format, const Tokenizer& tokenizer,
                                const std::string& file, int64_t line, std::string_view record,
                                std::vector<uint32_t>& tokens, std::vector<uint8_t>& mask) {
  ASSIGN_OR_RETURN(std::vector<ChatMessage> messages,
                   parse_chat_record(std::string(record), file, line));
  auto encoded = tokenize_chat(render_chat(format, messages), tokenizer);
  if (!encoded.ok()) return encoded.status().with_context(file + ":" + std::to_string(line));
  tokens.insert(tokens.end(), encoded->ids.begin(), encoded->ids.end());
  mask.insert(mask.end(), encoded->mask.begin(), encoded->mask.end());
  return base::Status::Ok();
}

base::Status prepare_chat_jsonl(const std::vector<std::string>& inputs, const std::string& out,
                                ChatFormat format, const PrepareOptions& options,
                                PrepareStats* stats) {
  auto encode = [format](const Tokenizer& tokenizer, const std::string& file, int64_t line,
                         std::string_view record, std::vector<uint32_t>& tokens,
                         std::vector<uint8_t>& mask) {
    return encode_chat_record(format, tokenizer, file, line, record, tokens, mask);
  };
  return prepare_jsonl(inputs, out, format_key(format), encode, options, stats);
}

}  // namespace dstrain::runtime
