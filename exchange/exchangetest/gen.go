// Package exchangetest writes synthetic 1C exchange messages for tests and
// benchmarks, streaming, so a gigabyte message costs no memory.
package exchangetest

import (
	"archive/zip"
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/relay1c/relay/exchange"
)

// WriteXML writes a platform (v8msg) message with the header h and a body of
// about bodySize bytes (repeated catalog objects), with a UTF-8 BOM.
func WriteXML(w io.Writer, h exchange.Header, bodySize int64) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	fmt.Fprintf(bw, "\ufeff<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<v8msg:Message xmlns:v8msg=\"http://v8.1c.ru/messages\">\n"+
		"<v8msg:Header><v8msg:ExchangePlan>%s</v8msg:ExchangePlan><v8msg:To>%s</v8msg:To><v8msg:From>%s</v8msg:From>"+
		"<v8msg:MessageNo>%d</v8msg:MessageNo><v8msg:ReceivedNo>%d</v8msg:ReceivedNo></v8msg:Header>\n<v8msg:Body>",
		h.ExchangePlan, h.To, h.From, h.MessageNo, h.ReceivedNo)
	var written int64
	for i := 0; written < bodySize; i++ {
		n, err := fmt.Fprintf(bw, "<v8:CatalogObject.Номенклатура xmlns:v8=\"http://v8.1c.ru/8.1/data/enterprise/current-config\"><v8:Code>%08d</v8:Code><v8:Description>Товар №%d из сообщения %d</v8:Description></v8:CatalogObject.Номенклатура>\n", i, i, h.MessageNo)
		if err != nil {
			return err
		}
		written += int64(n)
	}
	fmt.Fprint(bw, "</v8msg:Body>\n</v8msg:Message>\n")
	return bw.Flush()
}

// WriteZip writes the same message zipped, as 1C does (one .xml entry).
func WriteZip(w io.Writer, h exchange.Header, bodySize int64) error {
	zw := zip.NewWriter(w)
	ew, err := zw.Create(exchange.FileName(h.From, h.To, exchange.FormatXML))
	if err != nil {
		return err
	}
	if err := WriteXML(ew, h, bodySize); err != nil {
		return err
	}
	return zw.Close()
}

// WriteFile writes a message file into dir under its 1C name (zip when
// f is FormatZip) straight to the final name, as 1C does, and returns its path.
func WriteFile(dir string, h exchange.Header, bodySize int64, f exchange.Format) (string, error) {
	path := filepath.Join(dir, exchange.FileName(h.From, h.To, f))
	out, err := os.Create(path)
	if err != nil {
		return "", err
	}
	if f == exchange.FormatZip {
		err = WriteZip(out, h, bodySize)
	} else {
		err = WriteXML(out, h, bodySize)
	}
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return path, err
}
