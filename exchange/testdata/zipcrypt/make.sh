#!/bin/sh
# Regenerates the password-protected zip fixtures of zipcrypt_test.go, each
# written by a tool independent of this package, so that the tests check
# our decryption against what real archivers write. Not run by the tests or
# CI: run it by hand from this folder (sh make.sh) and commit the result.
#
# Needs: Info-ZIP zip (package zip), 7-Zip (p7zip-full), libarchive's bsdtar
# (libarchive-tools). Encryption salts and headers are random, so every run
# writes different bytes; the tests depend only on the password and the
# message inside.
#
#   zipcrypto-*      ZipCrypto (traditional PKWARE, 1C's default Zip20).
#                    Info-ZIP always sets flag bit 3 (data descriptor) with -P,
#                    so its check byte is the mod time's high byte; the
#                    -stdout one is written to a pipe (sizes only in the
#                    descriptor). 7-Zip writes no descriptor: its check byte
#                    is the CRC's high byte.
#   aes*-7zip-*      WinZip AES by 7-Zip: AE-2 (CRC field 0, HMAC only).
#   aes*-libarchive-* WinZip AES by bsdtar: AE-1 (CRC kept) with a descriptor.
set -eu
cd "$(dirname "$0")"
PW='relay-1C-test'
MSG=Message_ЦО_ОП.xml
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cp ../../../testdata/fixtures/good/$MSG "$tmp/$MSG"
touch -d '2024-03-01 12:34:56' "$tmp/$MSG"
out=$(pwd)
rm -f ./*.zip
cd "$tmp"

zip -q -X -P "$PW" "$out/zipcrypto-infozip-deflate.zip" $MSG
zip -q -X -0 -P "$PW" "$out/zipcrypto-infozip-store.zip" $MSG
zip -q -X -P "$PW" - $MSG | cat > "$out/zipcrypto-infozip-stdout.zip"
7z a -bd -tzip -p"$PW" -mem=ZipCrypto "$out/zipcrypto-7zip-deflate.zip" $MSG >/dev/null

7z a -bd -tzip -p"$PW" -mem=AES128 "$out/aes128-7zip-deflate.zip" $MSG >/dev/null
7z a -bd -tzip -p"$PW" -mem=AES192 "$out/aes192-7zip-deflate.zip" $MSG >/dev/null
7z a -bd -tzip -p"$PW" -mem=AES256 "$out/aes256-7zip-deflate.zip" $MSG >/dev/null
7z a -bd -tzip -p"$PW" -mem=AES128 -mx0 "$out/aes128-7zip-store.zip" $MSG >/dev/null
7z a -bd -tzip -p"$PW" -mem=AES256 -mx0 "$out/aes256-7zip-store.zip" $MSG >/dev/null

bsdtar -c --format zip --options zip:encryption=aes256 --passphrase "$PW" \
	-f "$out/aes256-libarchive-deflate.zip" $MSG
bsdtar -c --format zip --options zip:encryption=aes128,zip:compression=store --passphrase "$PW" \
	-f "$out/aes128-libarchive-store.zip" $MSG

cd "$out"
for z in ./*.zip; do
	unzip -tq -P "$PW" "$z" >/dev/null 2>&1 || 7z t -bd -p"$PW" "$z" >/dev/null
done
ls -l ./*.zip
