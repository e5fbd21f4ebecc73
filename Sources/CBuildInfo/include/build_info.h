#ifndef IDENTGATE_BUILD_INFO_H
#define IDENTGATE_BUILD_INFO_H

/// The git commit the binary was built from (Package.swift passes it from
/// `Context.gitInformation`, or IDENTGATE_COMMIT from the environment), with
/// "-modified" when the work tree had uncommitted changes; "unknown" outside git.
const char *identgate_build_commit(void);

#endif
