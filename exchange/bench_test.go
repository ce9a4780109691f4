package exchange

import (
	"bufio"
	"encoding/xml"
	"io"
	"testing"
)

const (
	benchHead = "\ufeff<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n" +
		`<v8msg:Message xmlns:v8msg="http://v8.1c.ru/messages">` + "\n" +
		`<v8msg:Header><v8msg:ExchangePlan>Магазины</v8msg:ExchangePlan><v8msg:To>ОП</v8msg:To>` +
		`<v8msg:From>ЦО</v8msg:From><v8msg:MessageNo>20</v8msg:MessageNo><v8msg:ReceivedNo>15</v8msg:ReceivedNo></v8msg:Header>` + "\n" +
		`<v8msg:Body><v8de:Data xmlns:v8de="http://v8.1c.ru/dataexchange">`
	benchItem = `<v8:CatalogObject.Номенклатура xmlns:v8="http://v8.1c.ru/8.1/data/enterprise/current-config">` +
		`<v8:Ref>a165efd1-96e1-7ba1-95ad-4dc50028b39a</v8:Ref><v8:DeletionMark>false</v8:DeletionMark>` +
		`<v8:Code>ЦО0000000</v8:Code><v8:Description>Товар №0 «a» &amp; с описанием подлиннее</v8:Description>` +
		`<v8:Price>1234.50</v8:Price></v8:CatalogObject.Номенклатура>` + "\n"
	benchTail = "</v8de:Data></v8msg:Body>\n</v8msg:Message>\n"
)

// genMessage is a reader over a v8msg message whose body repeats item n
// times: large messages for tests and benchmarks without holding them in memory.
type genMessage struct {
	head, item, tail string
	n                int // items left
	cur              string
	stage            int
}

func newGen(head, item, tail string, n int) *genMessage {
	return &genMessage{head: head, item: item, tail: tail, n: n, cur: head}
}

func (g *genMessage) size() int64 {
	return int64(len(g.head)) + int64(g.n)*int64(len(g.item)) + int64(len(g.tail))
}

func (g *genMessage) Read(p []byte) (int, error) {
	total := 0
	for len(p) > 0 {
		if g.cur == "" {
			switch {
			case g.stage == 0 && g.n > 0:
				g.n--
				g.cur = g.item
			case g.stage == 0:
				g.stage, g.cur = 1, g.tail
			default:
				if total == 0 {
					return 0, io.EOF
				}
				return total, nil
			}
		}
		k := copy(p, g.cur)
		g.cur = g.cur[k:]
		p = p[k:]
		total += k
	}
	return total, nil
}

// BenchmarkCheckXML runs CheckXML over a generated ~64 MiB message.
func BenchmarkCheckXML(b *testing.B) {
	n := (64 << 20) / len(benchItem)
	b.SetBytes(newGen(benchHead, benchItem, benchTail, n).size())
	b.ReportAllocs()
	for b.Loop() {
		h, err := CheckXML(newGen(benchHead, benchItem, benchTail, n), Limits{})
		if err != nil || h.MessageNo != 20 {
			b.Fatal(h, err)
		}
	}
}

// BenchmarkRawTokenBaseline is encoding/xml's RawToken alone over the same
// message and buffer, to show what CheckXML adds on top.
func BenchmarkRawTokenBaseline(b *testing.B) {
	n := (64 << 20) / len(benchItem)
	b.SetBytes(newGen(benchHead, benchItem, benchTail, n).size())
	for b.Loop() {
		dec := xml.NewDecoder(bufio.NewReaderSize(newGen(benchHead, benchItem, benchTail, n), bufSize))
		dec.Strict = true
		for {
			if _, err := dec.RawToken(); err != nil {
				if err != io.EOF {
					b.Fatal(err)
				}
				break
			}
		}
	}
}
