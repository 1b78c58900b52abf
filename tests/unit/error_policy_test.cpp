// SQLSTATE -> what to do next (SPEC §6): data and integrity errors are fatal for the event;
// everything that may succeed later (and anything unknown) is transient.
#include "pipeline/error_policy.hpp"

#include <gtest/gtest.h>

#include <string>

namespace evp::pipeline {
namespace {

TEST(ErrorPolicy, TreatsIntegrityAndDataErrorsAsFatal) {
  for (const char* state : {"23505",     // unique_violation
                            "23502",     // not_null_violation
                            "23503",     // foreign_key_violation
                            "23514",     // check_violation
                            "22P02",     // invalid_text_representation
                            "22021",     // character_not_in_repertoire (NUL, bad UTF-8)
                            "22001",     // string_data_right_truncation
                            "22003"}) {  // numeric_value_out_of_range
    EXPECT_EQ(ClassifySqlState(state), StoreErrorKind::kFatal) << state;
  }
}

TEST(ErrorPolicy, TreatsConnectionShutdownAndConcurrencyErrorsAsTransient) {
  for (const char* state : {"08006",     // connection_failure
                            "08001",     // sqlclient_unable_to_establish_sqlconnection
                            "08003",     // connection_does_not_exist
                            "57P01",     // admin_shutdown
                            "57P03",     // cannot_connect_now
                            "40001",     // serialization_failure
                            "40P01",     // deadlock_detected
                            "55P03",     // lock_not_available
                            "53300",     // too_many_connections
                            "53100",     // disk_full
                            "42P01"}) {  // undefined_table (migrations still running)
    EXPECT_EQ(ClassifySqlState(state), StoreErrorKind::kTransient) << state;
  }
}

TEST(ErrorPolicy, TreatsUnknownOrMissingStatesAsTransient) {
  for (const std::string& state : {std::string(""), std::string("2"), std::string("XX000"),
                                   std::string("zz"), std::string("P0001")}) {
    EXPECT_EQ(ClassifySqlState(state), StoreErrorKind::kTransient) << "'" << state << "'";
  }
}

TEST(ErrorPolicy, NeverClassifiesAnErrorAsATenantCollision) {
  for (const char* state : {"23505", "42P06", "42710", ""}) {
    EXPECT_NE(ClassifySqlState(state), StoreErrorKind::kCollision) << state;
  }
}

}  // namespace
}  // namespace evp::pipeline
