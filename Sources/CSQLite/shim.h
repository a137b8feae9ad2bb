// The system's SQLite (libsqlite3-dev), for the change journal's database. Linking it
// directly keeps the build small; hsmd needs a handful of calls.
#include <sqlite3.h>
