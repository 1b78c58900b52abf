// PrimaryErrorMessage: database error texts in reasons and logs never carry the DETAIL line
// (PostgreSQL quotes the failing row there).
#include "postgres/pg_errors.hpp"

#include <gtest/gtest.h>

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

}  // namespace
}  // namespace evp::postgres
