package exchange

import (
	"errors"
	"strings"
	"testing"
)

// TestRulesWithLargeExchangeRules: a rules-based (КД2) message carries
// the exchange rules (<ПравилаОбмена>, the conversion rules the receiver
// imports by) before <ДанныеПоОбмену>; for real configurations they run to
// several MB. The header reader skips them; they counted against
// MaxHeaderBytes (1 MiB), so with the default limits a valid КД2 message
// with 2 MiB of rules was refused as "too large" and dead-lettered.
func TestRulesWithLargeExchangeRules(t *testing.T) {
	var rules strings.Builder
	rules.WriteString("<ПравилаОбмена><ВерсияФормата>2.01</ВерсияФормата><ПравилаКонвертацииОбъектов><Группа>")
	for i := 0; rules.Len() < 2<<20; i++ {
		rules.WriteString(`<Правило><Код>Номенклатура</Код><Наименование>Номенклатура</Наименование>` +
			`<Источник>СправочникСсылка.Номенклатура</Источник><Приемник>СправочникСсылка.Номенклатура</Приемник>` +
			`<Свойства><Свойство Поиск="true"><Код>1</Код><Источник Имя="Код" Вид="Свойство" Тип="Строка"/>` +
			`<Приемник Имя="Код" Вид="Свойство" Тип="Строка"/></Свойство></Свойства></Правило>`)
	}
	rules.WriteString("</Группа></ПравилаКонвертацииОбъектов></ПравилаОбмена>")
	doc := rulesMsg(`ПланОбмена="П" ОтКого="А" Кому="Б" НомерИсходящегоСообщения="9" НомерВходящегоСообщения="8"`, rules.String())
	want := Header{DialectRules, "П", "А", "Б", 9, 8}
	h, err := CheckXML(strings.NewReader(doc), Limits{})
	if err != nil || h != want {
		t.Errorf("КД2 message with %d KiB of exchange rules: %+v, %v; want %+v", rules.Len()>>10, h, err, want)
	}
}

// TestRulesWithLargeTypeInformation: a КД2 file may also carry, between the
// exchange rules and <ДанныеПоОбмену>, the description of the types the
// rules use (<ИнформацияОТипахДанных>, one <ТипДанных> per object type),
// which grows with the rules as they do. It counted against MaxHeaderBytes,
// so such a file of 2 MiB was refused as "too large" and every message of
// its channel dead-lettered (found by review). What follows the last such
// section is still bounded by MaxHeaderBytes.
func TestRulesWithLargeTypeInformation(t *testing.T) {
	typ := `<ТипДанных Имя="СправочникСсылка.Номенклатура">` +
		strings.Repeat(`<Свойство Имя="Реквизит" Тип="Строка"/>`, 20) + `</ТипДанных>`
	info := "<ИнформацияОТипахДанных>" + strings.Repeat(typ, 1500) + "</ИнформацияОТипахДанных>"
	attrs := `ПланОбмена="П" ОтКого="А" Кому="Б" НомерИсходящегоСообщения="9" НомерВходящегоСообщения="8"`
	doc := rulesMsg(attrs, "<ПравилаОбмена><Ид>1</Ид></ПравилаОбмена>"+info)
	want := Header{DialectRules, "П", "А", "Б", 9, 8}
	if h, err := CheckXML(strings.NewReader(doc), Limits{}); err != nil || h != want {
		t.Errorf("КД2 message with %d KiB of type information: CheckXML %+v, %v; want %+v", len(info)>>10, h, err, want)
	}
	if in, err := Inspect(strings.NewReader(doc), int64(len(doc)), Limits{}, ""); err != nil || in.Header != want {
		t.Errorf("КД2 message with %d KiB of type information: Inspect %+v, %v; want %+v", len(info)>>10, in.Header, err, want)
	}
	// The header's own bound after the sections: a <ДанныеПоОбмену> that
	// never ends its start tag within the limit is too large.
	junk := rulesMsg(attrs, info+"<Пусто/>")
	junk = strings.Replace(junk, "<ДанныеПоОбмену ", "<ДанныеПоОбмену "+strings.Repeat(`x="1" `, 64<<10)[:1000]+strings.Repeat(" ", 2<<20), 1)
	if _, err := CheckXML(strings.NewReader(junk), Limits{}); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "after Пусто") {
		t.Errorf("header start tag of 2 MiB after the sections: %v, want ErrTooLarge after Пусто", err)
	}
}
