#include "support/nats_client.hpp"

#include <stdexcept>

namespace evp::testing {
namespace {

std::string ErrorText(natsStatus s, jsErrCode js_err) {
  std::string text = natsStatus_GetText(s);
  if (s == NATS_NO_RESPONDERS) text = "no responders: " + text;
  if (js_err != 0) text += " (JetStream error " + std::to_string(js_err) + ")";
  if (const char* last = nats_GetLastError(nullptr); last != nullptr && *last != '\0') {
    text += ": ";
    text += last;
  }
  return text;
}

}  // namespace

TestPublisher::TestPublisher(std::string url) : url_(std::move(url)) {
  natsOptions* opts = nullptr;
  natsStatus s = natsOptions_Create(&opts);
  if (s == NATS_OK) s = natsOptions_SetURL(opts, url_.c_str());
  if (s == NATS_OK) s = natsOptions_SetTimeout(opts, 5000);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(opts, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(opts, 50);
  if (s == NATS_OK) s = natsConnection_Connect(&conn_, opts);
  if (s == NATS_OK) s = natsConnection_JetStream(&js_, conn_, nullptr);
  natsOptions_Destroy(opts);
  if (s != NATS_OK) {
    std::string error = ErrorText(s, static_cast<jsErrCode>(0));
    jsCtx_Destroy(js_);
    natsConnection_Destroy(conn_);
    throw std::runtime_error("TestPublisher: cannot connect to " + url_ + ": " + error);
  }
}

TestPublisher::~TestPublisher() {
  jsCtx_Destroy(js_);
  natsConnection_Destroy(conn_);
}

PubResult TestPublisher::Publish(const std::string& subject, std::string_view bytes,
                                 const std::string& msg_id,
                                 const std::map<std::string, std::string>& headers) {
  PubResult result;
  natsMsg* msg = nullptr;
  natsStatus s =
      natsMsg_Create(&msg, subject.c_str(), nullptr, bytes.data(), static_cast<int>(bytes.size()));
  if (s == NATS_OK && !msg_id.empty()) s = natsMsgHeader_Set(msg, "Nats-Msg-Id", msg_id.c_str());
  for (const auto& [key, value] : headers) {
    if (s == NATS_OK) s = natsMsgHeader_Set(msg, key.c_str(), value.c_str());
  }
  jsPubAck* ack = nullptr;
  jsErrCode js_err{};
  if (s == NATS_OK) {
    jsPubOptions opts;
    jsPubOptions_Init(&opts);
    opts.MaxWait = 5000;
    s = js_PublishMsg(&ack, js_, msg, &opts, &js_err);
  }
  if (s == NATS_OK) {
    result.ok = true;
    result.sequence = ack->Sequence;
    result.duplicate = ack->Duplicate;
    result.stream = ack->Stream != nullptr ? ack->Stream : "";
  } else {
    result.error = ErrorText(s, js_err);
  }
  jsPubAck_Destroy(ack);
  natsMsg_Destroy(msg);
  return result;
}

std::string TestPublisher::AddStream(const std::string& name,
                                     const std::vector<std::string>& subjects) {
  std::vector<const char*> subject_ptrs;
  subject_ptrs.reserve(subjects.size());
  for (const auto& subject : subjects) subject_ptrs.push_back(subject.c_str());
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = name.c_str();
  cfg.Subjects = subject_ptrs.data();
  cfg.SubjectsLen = static_cast<int>(subject_ptrs.size());
  cfg.Storage = js_FileStorage;

  jsStreamInfo* info = nullptr;
  jsErrCode js_err{};
  natsStatus s = js_AddStream(&info, js_, &cfg, nullptr, &js_err);
  if (s != NATS_OK && js_err == JSStreamNameExistErr) {
    js_err = static_cast<jsErrCode>(0);
    s = js_UpdateStream(&info, js_, &cfg, nullptr, &js_err);
  }
  jsStreamInfo_Destroy(info);
  return s == NATS_OK ? std::string() : ErrorText(s, js_err);
}

}  // namespace evp::testing
