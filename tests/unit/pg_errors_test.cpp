// PrimaryErrorMessage: database error texts in reasons and logs never carry the DETAIL line
// (PostgreSQL quotes the failing row there).
#include "postgres/pg_errors.hpp"

#include <gtest/gtest.h>

#include <pqxx/pqxx>

namespace evp::postgres {
namespace {

TEST(PrimaryErrorMessage, KeepsOnlyThePrimaryLineWithoutTheSeverity) {
  EXPECT_EQ(
      PrimaryErrorMessage("ERROR:  new row for relation \"chats\" violates check constraint \"c\"\n"
                          "DETAIL:  Failing row contains (b1, acme, secret phone).\n"),
      "new row for relation \"chats\" violates check constraint \"c\"");
  EXPECT_EQ(PrimaryErrorMessage("ERROR:  boom\nCONTEXT:  PL/pgSQL function f() line 3\n"), "boom");
  EXPECT_EQ(PrimaryErrorMessage("FATAL:  terminating connection\n"), "terminating connection");
  EXPECT_EQ(PrimaryErrorMessage("server closed the connection unexpectedly\n\tThis probably "
                                "means the server terminated abnormally\n"),
            "server closed the connection unexpectedly");
  EXPECT_EQ(PrimaryErrorMessage(""), "");
}

// Classifies `thrown` as the store does inside its catch blocks.
template <typename E>
pipeline::StoreError Classify(const E& thrown) {
  try {
    throw thrown;
  } catch (...) {
    return ClassifyCurrentException();
  }
}

TEST(ClassifyCurrentException, GivesTransactionRollbacksTheirStateAndOnlyTheirPrimaryLine) {
  // libpqxx 6.4 throws SQLSTATE class 40 as transaction_rollback, which is no sql_error and
  // carries no state: the text must still be one clean line (DETAIL may quote a row).
  const std::string text = "ERROR:  could not serialize access\nDETAIL:  Row (secret).\n";
  auto e = Classify(pqxx::serialization_failure(text));
  EXPECT_EQ(e.kind, pipeline::StoreErrorKind::kTransient);
  EXPECT_EQ(e.message, "SQLSTATE 40001: could not serialize access");
  EXPECT_EQ(Classify(pqxx::deadlock_detected("ERROR:  deadlock detected\nDETAIL:  x\n")).message,
            "SQLSTATE 40P01: deadlock detected");
  EXPECT_EQ(Classify(pqxx::transaction_rollback("ERROR:  rolled back\n")).message,
            "SQLSTATE 40000: rolled back");
}

TEST(ClassifyCurrentException, KeepsConnectionLossesToOneLine) {
  auto e = Classify(pqxx::broken_connection(
      "server closed the connection unexpectedly\n\tThis probably means the server terminated "
      "abnormally\n"));
  EXPECT_EQ(e.kind, pipeline::StoreErrorKind::kTransient);
  EXPECT_EQ(e.message.find('\n'), std::string::npos) << e.message;
  EXPECT_EQ(e.message.rfind("connection lost: server closed the connection unexpectedly", 0), 0u)
      << e.message;
  auto other = Classify(std::runtime_error("ERROR:  boom\nDETAIL:  Failing row contains (x).\n"));
  EXPECT_EQ(other.message, "boom");
}

}  // namespace
}  // namespace evp::postgres
