# %pre of the surepush .rpm ($1: 1 = install, 2 = upgrade). packaging/build.sh replaces
# #COMMON# with packaging/scripts/common.sh.
set -e

#COMMON#

sp_ensure_user
